//! Request signatures (SPEC §5).
//!
//! With a `signing_secret`: `X-Webhook-Signature: t=<ts>,v1=<hex HMAC-SHA256(secret,
//! "<ts>.<body>")>`, keyed with the secret string's bytes, over the exact bytes sent, `<ts>` the
//! same unix seconds as `X-Webhook-Timestamp`. A secret with the `whsec_` prefix also gets the
//! Standard Webhooks headers: `webhook-id`, `webhook-timestamp` and `webhook-signature:
//! v1,<base64 HMAC-SHA256(key, "<id>.<ts>.<body>")>` with key = base64-decode of the text after
//! `whsec_`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::record::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The secret cannot sign: a `whsec_` secret whose key part is not base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing_secret starts with whsec_ but the rest is not base64")]
pub struct SignError;

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The signature headers for one request.
pub fn signature_headers(
    secret: &Secret,
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, SignError> {
    let ts = timestamp.to_string();
    let v1 = hex::encode(hmac(
        secret.expose().as_bytes(),
        &[ts.as_bytes(), b".", body],
    ));
    let mut headers = vec![("X-Webhook-Signature", format!("t={ts},v1={v1}"))];
    if let Some(encoded) = secret.expose().strip_prefix("whsec_") {
        let key = STANDARD.decode(encoded).map_err(|_| SignError)?;
        let signature = hmac(
            &key,
            &[webhook_id.as_bytes(), b".", ts.as_bytes(), b".", body],
        );
        headers.push(("webhook-id", webhook_id.to_owned()));
        headers.push(("webhook-timestamp", ts));
        headers.push((
            "webhook-signature",
            format!("v1,{}", STANDARD.encode(signature)),
        ));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn howk_signature_is_hex_hmac_of_timestamp_and_body() {
        let headers =
            signature_headers(&Secret::new("s3cret"), "wh_1", 1_700_000_000, b"{\"a\":1}").unwrap();
        assert_eq!(headers.len(), 1);
        let expected = hex::encode(hmac(b"s3cret", &[b"1700000000.{\"a\":1}"]));
        assert_eq!(
            headers[0],
            ("X-Webhook-Signature", format!("t=1700000000,v1={expected}"))
        );
    }

    #[test]
    fn standard_webhooks_vector() {
        // The Standard Webhooks specification's example.
        let headers = signature_headers(
            &Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(
            headers[1],
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".into())
        );
        assert_eq!(headers[2], ("webhook-timestamp", "1614265330".into()));
        assert_eq!(
            headers[3],
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into()
            )
        );
    }

    #[test]
    fn whsec_secret_that_is_not_base64_is_an_error() {
        assert_eq!(
            signature_headers(&Secret::new("whsec_***"), "wh_1", 1, b""),
            Err(SignError)
        );
    }
}
