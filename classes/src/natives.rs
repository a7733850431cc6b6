//! The few natives the prelude builds on: UTF-8 and base64 between strings
//! and `ArrayBuffer`s, random bytes, and `console` into `tracing` with the
//! room's name. Everything else of the API is JavaScript (`prelude.js`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rquickjs::{ArrayBuffer, Ctx, Function, Object};

/// Most random bytes one call may ask for.
const MAX_RANDOM_BYTES: usize = 65_536;

/// The few natives the prelude builds on.
pub(crate) fn install(ctx: &Ctx<'_>, room: String) -> rquickjs::Result<()> {
    let host = Object::new(ctx.clone())?;
    host.set("utf8Encode", Function::new(ctx.clone(), utf8_encode)?)?;
    host.set("utf8Decode", Function::new(ctx.clone(), utf8_decode)?)?;
    host.set("base64Encode", Function::new(ctx.clone(), base64_encode)?)?;
    host.set("base64Decode", Function::new(ctx.clone(), base64_decode)?)?;
    host.set("randomBytes", Function::new(ctx.clone(), random_bytes)?)?;
    host.set(
        "log",
        Function::new(ctx.clone(), move |level: String, text: String| match level.as_str() {
            "error" => tracing::error!(room.id = %room, "{text}"),
            "warn" => tracing::warn!(room.id = %room, "{text}"),
            "debug" => tracing::debug!(room.id = %room, "{text}"),
            _ => tracing::info!(room.id = %room, "{text}"),
        })?,
    )?;
    ctx.globals().set("__host", host)
}

/// The bytes of an `ArrayBuffer`, copied out.
#[allow(unsafe_code)]
pub(crate) fn bytes_of(buffer: &ArrayBuffer<'_>) -> Vec<u8> {
    // SAFETY: the slice is copied at once; no JavaScript runs while it lives.
    unsafe { buffer.as_bytes() }.map(<[u8]>::to_vec).unwrap_or_default()
}

fn utf8_encode<'js>(ctx: Ctx<'js>, text: String) -> rquickjs::Result<ArrayBuffer<'js>> {
    ArrayBuffer::new(ctx, text.into_bytes())
}

fn utf8_decode(bytes: ArrayBuffer<'_>) -> String {
    String::from_utf8_lossy(&bytes_of(&bytes)).into_owned()
}

fn base64_encode(bytes: ArrayBuffer<'_>) -> String {
    BASE64.encode(bytes_of(&bytes))
}

/// Standard or URL-safe base64, padded or not (as Node's `Buffer` reads it).
fn base64_decode<'js>(ctx: Ctx<'js>, text: String) -> rquickjs::Result<ArrayBuffer<'js>> {
    let trimmed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let standard = trimmed.replace('-', "+").replace('_', "/");
    let padded = match standard.len() % 4 {
        2 => format!("{standard}=="),
        3 => format!("{standard}="),
        _ => standard,
    };
    match BASE64.decode(padded) {
        Ok(bytes) => ArrayBuffer::new(ctx, bytes),
        Err(_) => Err(rquickjs::Exception::throw_type(&ctx, "invalid base64")),
    }
}

fn random_bytes<'js>(ctx: Ctx<'js>, n: usize) -> rquickjs::Result<ArrayBuffer<'js>> {
    let mut bytes = vec![0u8; n.min(MAX_RANDOM_BYTES)];
    rand::fill(&mut bytes[..]);
    ArrayBuffer::new(ctx, bytes)
}
