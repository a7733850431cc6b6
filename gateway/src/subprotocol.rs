//! `Sec-WebSocket-Protocol` handling, including the Nuxflare client's
//! credential: the first offered subprotocol is base64(`room:userId`) with
//! `=` stripped. The credential is never echoed back; the next offered
//! subprotocol (e.g. `chat`) is selected instead.

use hyper::header::{HeaderMap, SEC_WEBSOCKET_PROTOCOL};

/// Offered subprotocols, in order.
pub fn offered(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .take(16)
        .collect()
}

/// Decodes base64(`room:userId`) (standard or URL-safe alphabet, padding optional).
pub fn decode_credential(protocol: &str) -> Option<(String, String)> {
    let bytes = decode_base64(protocol)?;
    let text = String::from_utf8(bytes).ok()?;
    let (room, user) = text.split_once(':')?;
    if room.is_empty() || user.is_empty() {
        return None;
    }
    Some((room.to_owned(), user.to_owned()))
}

fn decode_base64(input: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let input = input.trim_end_matches('=').as_bytes();
    if input.len() % 4 == 1 || input.len() > 1024 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    for chunk in input.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_nuxflare_credentials() {
        // base64("lobby:alice") = "bG9iYnk6YWxpY2U="
        assert_eq!(decode_credential("bG9iYnk6YWxpY2U"), Some(("lobby".into(), "alice".into())));
        assert_eq!(decode_credential("bG9iYnk6YWxpY2U="), Some(("lobby".into(), "alice".into())));
        assert_eq!(decode_credential("chat"), None);
        assert_eq!(decode_credential("!!"), None);
        assert_eq!(decode_decode_len("QQ"), Some(vec![b'A']));
    }

    fn decode_decode_len(s: &str) -> Option<Vec<u8>> {
        decode_base64(s)
    }
}
