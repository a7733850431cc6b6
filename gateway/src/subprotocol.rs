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
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_subprotocol_headers_never_panic(value in "[ -~]{0,400}") {
            let mut headers = HeaderMap::new();
            if let Ok(value) = value.parse() {
                headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
            }
            for offered in offered(&headers) {
                if let Some((room, user)) = decode_credential(&offered) {
                    prop_assert!(!room.is_empty() && !user.is_empty());
                }
            }
        }

        #[test]
        fn credentials_round_trip(room in "[a-z0-9]{1,20}", user in "[a-z0-9]{1,20}") {
            let encoded = b64(format!("{room}:{user}").as_bytes());
            prop_assert_eq!(decode_credential(encoded.trim_end_matches('=')), Some((room, user)));
        }
    }

    fn b64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

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
