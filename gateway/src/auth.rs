//! Who may open a socket, decided before the upgrade: the `Origin` check
//! (cross-site WebSocket hijacking) and the user's identity — a verified JWT
//! in `--auth jwt`, or `?user=` in the `--auth none` development mode.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderMap, ORIGIN};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use rooms_proto::{RoomId, UserId};
use serde::Deserialize;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Why a handshake is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// HTTP 401: no valid credential.
    Unauthorized(String),
    /// HTTP 403: valid, but not for this (origin, room).
    Forbidden(String),
    /// HTTP 400: malformed input.
    BadRequest(String),
}

/// A verified user and, with a token, when that token stops being valid.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    pub expires_at: Option<SystemTime>,
}

/// The accepted token algorithms, pinned by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

pub struct JwtAuth {
    keys: Keys,
    validation: Validation,
}

enum Keys {
    One(DecodingKey),
    /// A JWKS: the token's `kid` picks the key (or the only one, without `kid`).
    ById(HashMap<String, DecodingKey>),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "--auth jwt needs exactly one of --jwt-secret[-file] (HS256), --jwt-public-key or --jwt-jwks (RS256/ES256)"
    )]
    NoKey,
    #[error("--jwt-algorithm {0:?} does not match the key given")]
    AlgorithmMismatch(JwtAlgorithm),
    #[error("the JWT key: {0}")]
    Key(String),
    #[error("--allowed-origins entry `{0}` is not an origin (https://host[:port]) or *.domain")]
    Origin(String),
}

impl JwtAuth {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Result<Self, AuthConfigError> {
        if secret.len() < 16 {
            return Err(AuthConfigError::Key("the HS256 secret must be at least 16 bytes".into()));
        }
        Ok(Self::new(Keys::One(DecodingKey::from_secret(secret)), Algorithm::HS256))
    }

    /// RS256 or ES256 with a PEM public key.
    pub fn public_key(pem: &[u8], algorithm: JwtAlgorithm) -> Result<Self, AuthConfigError> {
        let (key, alg) = match algorithm {
            JwtAlgorithm::Rs256 => (DecodingKey::from_rsa_pem(pem), Algorithm::RS256),
            JwtAlgorithm::Es256 => (DecodingKey::from_ec_pem(pem), Algorithm::ES256),
            JwtAlgorithm::Hs256 => return Err(AuthConfigError::AlgorithmMismatch(algorithm)),
        };
        Ok(Self::new(Keys::One(key.map_err(|e| AuthConfigError::Key(e.to_string()))?), alg))
    }

    /// RS256 or ES256 with the public keys of a JWKS document.
    pub fn jwks(json: &[u8], algorithm: JwtAlgorithm) -> Result<Self, AuthConfigError> {
        let alg = match algorithm {
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
            JwtAlgorithm::Hs256 => return Err(AuthConfigError::AlgorithmMismatch(algorithm)),
        };
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| AuthConfigError::Key(e.to_string()))?;
        let mut keys = HashMap::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let key =
                DecodingKey::from_jwk(jwk).map_err(|e| AuthConfigError::Key(e.to_string()))?;
            keys.insert(jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}")), key);
        }
        if keys.is_empty() {
            return Err(AuthConfigError::Key("the JWKS holds no key".into()));
        }
        Ok(Self::new(Keys::ById(keys), alg))
    }

    fn new(keys: Keys, algorithm: Algorithm) -> Self {
        // Exactly one algorithm: `none` and algorithm confusion are refused.
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = false;
        Self { keys, validation }
    }

    fn key_for(&self, token: &str) -> Result<&DecodingKey, Denied> {
        match &self.keys {
            Keys::One(key) => Ok(key),
            Keys::ById(keys) => {
                let header = decode_header(token)
                    .map_err(|e| Denied::Unauthorized(format!("invalid token: {e}")))?;
                match header.kid {
                    Some(kid) => keys.get(&kid),
                    None if keys.len() == 1 => keys.values().next(),
                    None => None,
                }
                .ok_or_else(|| Denied::Unauthorized("invalid token: unknown key id".into()))
            }
        }
    }

    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self
    }

    pub fn with_audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self
    }

    fn verify(&self, token: &str, room: &RoomId) -> Result<Identity, Denied> {
        let key = self.key_for(token)?;
        let data = decode::<Claims>(token, key, &self.validation)
            .map_err(|e| Denied::Unauthorized(format!("invalid token: {e}")))?;
        let claims = data.claims;
        let user = UserId::parse(&claims.sub)
            .map_err(|e| Denied::Unauthorized(format!("invalid token subject: {e}")))?;
        if let Some(rooms) = &claims.rooms
            && !rooms.iter().any(|pattern| room_matches(pattern, room.as_str()))
        {
            return Err(Denied::Forbidden(format!("this token does not allow room `{room}`")));
        }
        let expires_at = UNIX_EPOCH + Duration::from_secs(claims.exp + LEEWAY_SECS);
        Ok(Identity { user, expires_at: Some(expires_at) })
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Rooms the token opens: exact names or `prefix*`. Absent: every room.
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// `pattern` is an exact room name or `prefix*`.
pub fn room_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Allowed `Origin`s: exact (`https://app.example.com`) or any subdomain
/// (`*.example.com`, any scheme and port). Empty: every origin.
#[derive(Debug, Clone, Default)]
pub struct Origins(Vec<OriginPattern>);

#[derive(Debug, Clone)]
enum OriginPattern {
    Exact(String),
    Subdomain(String),
}

impl Origins {
    pub fn parse(list: &[String]) -> Result<Self, AuthConfigError> {
        let mut patterns = Vec::new();
        for item in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let pattern = if let Some(domain) = item.strip_prefix("*.") {
                OriginPattern::Subdomain(format!(".{}", domain.to_ascii_lowercase()))
            } else if item.contains("://") {
                OriginPattern::Exact(item.trim_end_matches('/').to_ascii_lowercase())
            } else {
                return Err(AuthConfigError::Origin(item.to_owned()));
            };
            patterns.push(pattern);
        }
        Ok(Self(patterns))
    }

    pub fn allows_any(&self) -> bool {
        self.0.is_empty()
    }

    /// Non-browser clients send no `Origin` and are not subject to the check.
    fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.0.is_empty() {
            return true;
        }
        let origin = origin.to_ascii_lowercase();
        let host = origin.split_once("://").map_or("", |(_, rest)| rest);
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host }
        });
        self.0.iter().any(|pattern| match pattern {
            OriginPattern::Exact(exact) => *exact == origin,
            OriginPattern::Subdomain(suffix) => host.ends_with(suffix.as_str()),
        })
    }
}

/// The gateway's access policy.
pub struct Access {
    pub jwt: Option<JwtAuth>,
    pub origins: Origins,
}

impl Access {
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
        if self.origins.allows(origin) {
            Ok(())
        } else {
            Err(Denied::Forbidden(format!("origin {} is not allowed", origin.unwrap_or(""))))
        }
    }

    /// The user of a handshake: from the token in `--auth jwt`, else from
    /// `?user=` (or the Nuxflare credential), else a random anonymous id.
    pub fn identify(
        &self,
        room: &RoomId,
        token: Option<&str>,
        user: Option<&str>,
    ) -> Result<Identity, Denied> {
        if let Some(jwt) = &self.jwt {
            let token = token.ok_or_else(|| {
                Denied::Unauthorized(
                    "a token is required (?token=, Authorization: Bearer, or the first subprotocol)".into(),
                )
            })?;
            return jwt.verify(token, room);
        }
        let user = match user {
            Some(user) => UserId::parse(user).map_err(|e| Denied::BadRequest(e.to_string()))?,
            None => UserId::parse(&format!("anon-{:08x}", rand::random::<u32>()))
                .map_err(|e| Denied::BadRequest(e.to_string()))?,
        };
        Ok(Identity { user, expires_at: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Handshake inputs from the network never panic the checks.
        #[test]
        fn arbitrary_handshake_inputs_are_refused_not_panicked(
            token in ".{0,300}",
            origin in ".{0,100}",
            user in proptest::option::of(".{0,200}"),
        ) {
            let access = Access {
                jwt: Some(JwtAuth::hs256(b"0123456789abcdef0123").unwrap()),
                origins: Origins::parse(&["https://a.example".into(), "*.b.example".into()]).unwrap(),
            };
            let room = RoomId::parse("r").unwrap();
            prop_assert!(matches!(access.identify(&room, Some(&token), None), Err(Denied::Unauthorized(_))));
            let _ = access.origins.allows(Some(&origin));
            let open = Access { jwt: None, origins: Origins::default() };
            if let Ok(identity) = open.identify(&room, None, user.as_deref()) {
                prop_assert!(UserId::parse(identity.user.as_str()).is_ok());
            }
        }
    }

    #[test]
    fn room_patterns() {
        assert!(room_matches("lobby", "lobby"));
        assert!(!room_matches("lobby", "lobby2"));
        assert!(room_matches("team-*", "team-42"));
        assert!(!room_matches("team-*", "other"));
        assert!(room_matches("*", "anything"));
    }

    #[test]
    fn origins() {
        let origins =
            Origins::parse(&["https://app.example.com".into(), "*.example.org".into()]).unwrap();
        assert!(origins.allows(None));
        assert!(origins.allows(Some("https://app.example.com")));
        assert!(origins.allows(Some("HTTPS://APP.EXAMPLE.COM")));
        assert!(!origins.allows(Some("https://evil.com")));
        assert!(!origins.allows(Some("https://app.example.com.evil.com")));
        assert!(origins.allows(Some("https://a.example.org:8443")));
        assert!(!origins.allows(Some("https://example.org.evil.net")));
        assert!(!origins.allows(Some("https://notexample.org")));
        assert!(Origins::parse(&["example.com".into()]).is_err());
        assert!(Origins::default().allows(Some("https://anything")));
    }
}
