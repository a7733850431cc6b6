//! `roomctl token`: mints an HS256 client token the gateway accepts with
//! `--auth jwt --jwt-secret` (development, tests, the README's example).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use crate::cli::TokenArgs;

pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = json!({ "sub": args.user, "iat": now, "exp": now + args.ttl.as_secs() });
    if !args.rooms.is_empty() {
        claims["rooms"] = json!(args.rooms);
    }
    if let Some(issuer) = &args.issuer {
        claims["iss"] = json!(issuer);
    }
    if let Some(audience) = &args.audience {
        claims["aud"] = json!(audience);
    }
    Ok(encode(&Header::default(), &claims, &EncodingKey::from_secret(args.secret.as_bytes()))?)
}
