//! Request signatures (SPEC §5), and the verifier our tests and users' receivers can share.
//!
//! The secret's prefix picks the scheme:
//! - no prefix: `X-Webhook-Signature: t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`, keyed
//!   with the secret string's bytes (HOWK's header), over the exact bytes sent, `<ts>` the same
//!   unix seconds as `X-Webhook-Timestamp`.
//! - `whsec_<base64 key>`: that header too, and the Standard Webhooks headers `webhook-id`,
//!   `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<ts>.<body>")>`.
//! - `whsk_<base64 ed25519 secret key>` (Standard Webhooks v1a, asymmetric): the Standard
//!   Webhooks headers with `v1a,<base64 ed25519 signature of "<id>.<ts>.<body>">`. No
//!   `X-Webhook-Signature`: an HMAC needs a shared secret, and the receiver holds only the
//!   public key (`whpk_...`). The key is the 32-byte seed or the 64-byte seed‖public key pair.
//!
//! Rotation: a webhook may carry a previous secret until an expiry. Until then each header lists
//! one signature per key, the current one first — `t=..,v1=<new>,v1=<old>` and
//! `v1,<new> v1,<old>` (space-separated, as Standard Webhooks allows) — so a receiver that still
//! has only the old key keeps verifying. The two keys may use different schemes (moving from
//! `whsec_` to `whsk_` is a rotation like any other).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::record::Secret;

type HmacSha256 = Hmac<Sha256>;

/// A secret that cannot sign. Checked when a webhook is accepted, so an attempt meets it only
/// for records written by an older howk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("signing_secret starts with {0} but the rest is not base64")]
    NotBase64(&'static str),
    #[error("a whsk_ signing key must be an ed25519 secret key of 32 or 64 bytes, got {0} bytes")]
    KeyLength(usize),
    #[error("a 64-byte whsk_ signing key's second half is not the public key of its first")]
    KeyPairMismatch,
}

/// How one secret signs.
enum Key {
    /// Only HOWK's header.
    Plain,
    /// HOWK's header and Standard Webhooks v1.
    Hmac(Vec<u8>),
    /// Standard Webhooks v1a.
    Ed25519(Box<SigningKey>),
}

fn base64_part(text: &str, prefix: &'static str) -> Result<Vec<u8>, SignError> {
    // Standard Webhooks keys may come without padding.
    let trimmed = text.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .map_err(|_| SignError::NotBase64(prefix))
}

fn key_of(secret: &Secret) -> Result<Key, SignError> {
    let text = secret.expose();
    if let Some(encoded) = text.strip_prefix("whsec_") {
        return Ok(Key::Hmac(base64_part(encoded, "whsec_")?));
    }
    if let Some(encoded) = text.strip_prefix("whsk_") {
        let bytes = base64_part(encoded, "whsk_")?;
        let key = match bytes.len() {
            32 => SigningKey::from_bytes(bytes[..].try_into().expect("32 bytes")),
            64 => SigningKey::from_keypair_bytes(bytes[..].try_into().expect("64 bytes"))
                .map_err(|_| SignError::KeyPairMismatch)?,
            other => return Err(SignError::KeyLength(other)),
        };
        return Ok(Key::Ed25519(Box::new(key)));
    }
    Ok(Key::Plain)
}

/// Whether `secret` can sign; the error says why not. For validation at acceptance.
pub fn check_secret(secret: &Secret) -> Result<(), SignError> {
    key_of(secret).map(drop)
}

/// The public key (`whpk_...`) of a `whsk_` secret, to hand to the receiver; `None` for other
/// secrets.
pub fn public_key(secret: &Secret) -> Result<Option<String>, SignError> {
    Ok(match key_of(secret)? {
        Key::Ed25519(key) => Some(format!(
            "whpk_{}",
            STANDARD.encode(key.verifying_key().as_bytes())
        )),
        _ => None,
    })
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The signature headers for one request, signed with each of `secrets` (the current one first,
/// then a previous one still in its rotation window).
pub fn signature_headers(
    secrets: &[&Secret],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, SignError> {
    let ts = timestamp.to_string();
    let signed_content = [webhook_id.as_bytes(), b".", ts.as_bytes(), b".", body];
    let mut howk = Vec::new();
    let mut standard = Vec::new();
    for secret in secrets {
        let key = key_of(secret)?;
        if !matches!(key, Key::Ed25519(_)) {
            let v1 = hmac(secret.expose().as_bytes(), &[ts.as_bytes(), b".", body]);
            howk.push(format!("v1={}", hex::encode(v1)));
        }
        match key {
            Key::Plain => {}
            Key::Hmac(key) => {
                let signature = hmac(&key, &signed_content);
                standard.push(format!("v1,{}", STANDARD.encode(signature)));
            }
            Key::Ed25519(key) => {
                let signature = key.sign(&signed_content.concat());
                standard.push(format!("v1a,{}", STANDARD.encode(signature.to_bytes())));
            }
        }
    }
    let mut headers = Vec::new();
    if !howk.is_empty() {
        headers.push(("X-Webhook-Signature", format!("t={ts},{}", howk.join(","))));
    }
    if !standard.is_empty() {
        headers.push(("webhook-id", webhook_id.to_owned()));
        headers.push(("webhook-timestamp", ts));
        headers.push(("webhook-signature", standard.join(" ")));
    }
    Ok(headers)
}

/// Why a Standard Webhooks signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the key is not whsec_ or whpk_ followed by a key in base64")]
    BadKey,
    #[error("no signature in the header matches the key")]
    NoMatch,
}

/// A receiver's key: the shared HMAC secret, or the sender's ed25519 public key.
enum VerifyKey {
    Hmac(Vec<u8>),
    Ed25519(VerifyingKey),
}

/// Verifies a `webhook-signature` header against `key` — `whsec_...` (v1) or `whpk_...` (v1a):
/// true when any of its space-separated signatures is valid. The timestamp's freshness is the
/// caller's to check.
pub fn verify_standard(
    key: &str,
    webhook_id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
) -> Result<(), VerifyError> {
    let content = [
        webhook_id.as_bytes(),
        b".",
        timestamp.as_bytes(),
        b".",
        body,
    ]
    .concat();
    let key = if let Some(encoded) = key.strip_prefix("whsec_") {
        VerifyKey::Hmac(base64_part(encoded, "whsec_").map_err(|_| VerifyError::BadKey)?)
    } else if let Some(encoded) = key.strip_prefix("whpk_") {
        let bytes = base64_part(encoded, "whpk_").map_err(|_| VerifyError::BadKey)?;
        let public = <[u8; 32]>::try_from(bytes.as_slice())
            .ok()
            .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
            .ok_or(VerifyError::BadKey)?;
        VerifyKey::Ed25519(public)
    } else {
        return Err(VerifyError::BadKey);
    };
    let check = |signature: &[u8]| match &key {
        VerifyKey::Hmac(secret) => {
            // `verify_slice` compares in constant time.
            let mut mac = HmacSha256::new_from_slice(secret).expect("any key length");
            mac.update(&content);
            mac.verify_slice(signature).is_ok()
        }
        VerifyKey::Ed25519(public) => ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|signature| public.verify(&content, &signature).is_ok()),
    };
    let scheme = match key {
        VerifyKey::Hmac(_) => "v1",
        VerifyKey::Ed25519(_) => "v1a",
    };
    let matches = header.split(' ').any(|entry| {
        entry
            .split_once(',')
            .filter(|(version, _)| *version == scheme)
            .and_then(|(_, signature)| STANDARD.decode(signature).ok())
            .is_some_and(|signature| check(&signature))
    });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secrets: &[&str], id: &str, ts: i64, body: &[u8]) -> Vec<(&'static str, String)> {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        let refs: Vec<&Secret> = secrets.iter().collect();
        signature_headers(&refs, id, ts, body).unwrap()
    }

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A fixed ed25519 key for tests: seed bytes 0..32.
    fn whsk() -> String {
        format!("whsk_{}", STANDARD.encode((0u8..32).collect::<Vec<u8>>()))
    }

    #[test]
    fn howk_signature_is_hex_hmac_of_timestamp_and_body() {
        let headers = sign(&["s3cret"], "wh_1", 1_700_000_000, b"{\"a\":1}");
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
        let headers = sign(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            header(&headers, "webhook-id"),
            Some("msg_p5jXN8AQM9LWM0D4loKWxJek")
        );
        assert_eq!(header(&headers, "webhook-timestamp"), Some("1614265330"));
        assert_eq!(
            header(&headers, "webhook-signature"),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn rfc8032_test_vector_1_signs_as_v1a() {
        // RFC 8032 §7.1 TEST 1: the empty message under this seed. Our signed content is
        // "<id>.<ts>.<body>", so the vector is checked through the key and a direct signature.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let secret = Secret::new(format!("whsk_{}", STANDARD.encode(&seed)));
        assert_eq!(
            public_key(&secret).unwrap().unwrap(),
            format!(
                "whpk_{}",
                STANDARD.encode(
                    hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                        .unwrap()
                )
            )
        );
        let Key::Ed25519(key) = key_of(&secret).unwrap() else {
            panic!("a whsk_ key is ed25519");
        };
        assert_eq!(
            hex::encode(key.sign(b"").to_bytes()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn whsk_signs_v1a_without_the_howk_header_and_verifies() {
        let secret = whsk();
        let headers = sign(&[&secret], "wh_1", 1_700_000_000, b"{}");
        assert_eq!(header(&headers, "X-Webhook-Signature"), None);
        let signature = header(&headers, "webhook-signature").unwrap();
        assert!(signature.starts_with("v1a,"), "{signature}");
        let public = public_key(&Secret::new(secret)).unwrap().unwrap();
        assert_eq!(
            verify_standard(&public, "wh_1", "1700000000", b"{}", signature),
            Ok(())
        );
        // Another body, id or timestamp does not verify.
        assert_eq!(
            verify_standard(&public, "wh_1", "1700000000", b"{ }", signature),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify_standard(&public, "wh_2", "1700000000", b"{}", signature),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn a_64_byte_key_pair_signs_like_its_seed() {
        let seed: Vec<u8> = (0u8..32).collect();
        let signing = SigningKey::from_bytes(seed[..].try_into().unwrap());
        let pair = format!("whsk_{}", STANDARD.encode(signing.to_keypair_bytes()));
        assert_eq!(
            sign(&[&pair], "wh_1", 1, b"x"),
            sign(&[&whsk()], "wh_1", 1, b"x")
        );
        let mut wrong = signing.to_keypair_bytes();
        wrong[40] ^= 1;
        assert_eq!(
            check_secret(&Secret::new(format!("whsk_{}", STANDARD.encode(wrong)))),
            Err(SignError::KeyPairMismatch)
        );
    }

    #[test]
    fn a_rotation_sends_both_signatures_current_first() {
        let new = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let old = "whsec_c2VjcmV0LW9mLXR3ZW50eS1mb3VyLWJ5dGVz";
        let headers = sign(&[new, old], "wh_1", 1_700_000_000, b"{}");
        let howk = header(&headers, "X-Webhook-Signature").unwrap();
        let alone = |secret| sign(&[secret], "wh_1", 1_700_000_000, b"{}");
        let v1 = |headers: &[(&'static str, String)]| {
            header(headers, "X-Webhook-Signature")
                .unwrap()
                .split_once(',')
                .unwrap()
                .1
                .to_owned()
        };
        assert_eq!(
            howk,
            format!("t=1700000000,{},{}", v1(&alone(new)), v1(&alone(old)))
        );
        let standard = header(&headers, "webhook-signature").unwrap();
        assert_eq!(
            standard,
            format!(
                "{} {}",
                header(&alone(new), "webhook-signature").unwrap(),
                header(&alone(old), "webhook-signature").unwrap()
            )
        );
        // Each key alone verifies the combined header.
        for key in [new, old] {
            assert_eq!(
                verify_standard(key, "wh_1", "1700000000", b"{}", standard),
                Ok(())
            );
        }
    }

    #[test]
    fn a_rotation_across_schemes_lists_v1a_and_v1() {
        let headers = sign(
            &[&whsk(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "wh_1",
            1,
            b"{}",
        );
        let standard = header(&headers, "webhook-signature").unwrap();
        let versions: Vec<&str> = standard
            .split(' ')
            .map(|s| s.split_once(',').unwrap().0)
            .collect();
        assert_eq!(versions, ["v1a", "v1"]);
        // The HMAC key still gets HOWK's header, alone.
        assert_eq!(
            header(&headers, "X-Webhook-Signature")
                .unwrap()
                .matches("v1=")
                .count(),
            1
        );
    }

    #[test]
    fn unusable_keys_are_errors() {
        assert_eq!(
            check_secret(&Secret::new("whsec_***")),
            Err(SignError::NotBase64("whsec_"))
        );
        assert_eq!(
            check_secret(&Secret::new("whsk_***")),
            Err(SignError::NotBase64("whsk_"))
        );
        assert_eq!(
            check_secret(&Secret::new("whsk_AAAA")),
            Err(SignError::KeyLength(3))
        );
        assert!(signature_headers(&[&Secret::new("whsec_***")], "wh_1", 1, b"").is_err());
        assert_eq!(check_secret(&Secret::new("plain")), Ok(()));
    }
}
