//! The `crypto` module against vectors made by Node.js (tests/fixtures/crypto/generate.js):
//! PKCS#1 and PKCS#8 keys, AES-128/192/256-GCM, and negative vectors.

use std::sync::Arc;

use howk_processor::lua::modules::crypto::{CryptoKeys, CryptoModule};
use howk_processor::lua::{LuaConfig, LuaEngine, ScriptErrorKind};
use serde_json::Value;

use crate::helpers::*;

pub fn vectors() -> Value {
    serde_json::from_str(include_str!("../fixtures/crypto/vectors.json")).unwrap()
}

pub fn keys(vectors: &Value) -> CryptoKeys {
    let keys = vectors["keys"].as_object().unwrap();
    CryptoKeys::from_env(keys.iter().map(|(name, pem)| {
        (
            format!("HOWK_LUA_CRYPTO_{name}"),
            pem.as_str().unwrap().to_owned(),
        )
    }))
    .unwrap()
}

pub fn engine_with_crypto(keys: CryptoKeys) -> LuaEngine {
    let mut settings = LuaConfig::default().engine_settings(Arc::new(|_| None));
    settings.modules.push(Arc::new(CryptoModule::new(keys)));
    LuaEngine::new(settings)
}

pub fn decrypt_script(vector: &Value) -> String {
    format!(
        "local plain, err = crypto.decrypt_credential({:?}, {:?}, {:?}) \
         request.body = plain or ('ERR:' .. err)",
        vector["key_name"].as_str().unwrap(),
        vector["sym_key_b64"].as_str().unwrap(),
        vector["data_b64"].as_str().unwrap()
    )
}

#[test]
fn node_vectors_decrypt_with_pkcs1_and_pkcs8_keys_and_every_aes_size() {
    let vectors = vectors();
    let mut engine = engine_with_crypto(keys(&vectors));
    for vector in vectors["vectors"].as_array().unwrap() {
        let request = run_on(&mut engine, &decrypt_script(vector), &Webhook::default()).unwrap();
        assert_eq!(
            request.body.as_deref(),
            Some(vector["plaintext"].as_str().unwrap().as_bytes()),
            "{} AES-{}",
            vector["key_name"],
            vector["aes_bits"]
        );
    }
}

#[test]
fn negative_vectors_return_nil_and_a_precise_error() {
    let vectors = vectors();
    let mut engine = engine_with_crypto(keys(&vectors));
    for vector in vectors["negative"].as_array().unwrap() {
        let request = run_on(&mut engine, &decrypt_script(vector), &Webhook::default()).unwrap();
        let body = String::from_utf8(request.body.unwrap()).unwrap();
        let expected = vector["error"].as_str().unwrap();
        assert!(
            body.starts_with("ERR:") && body.contains(expected),
            "{}: {body}",
            vector["case"]
        );
    }
}

#[test]
fn script_failing_after_an_unknown_key_is_crypto_key_not_found() {
    let mut engine = engine_with_crypto(keys(&vectors()));
    let error = run_on(
        &mut engine,
        "local plain, err = crypto.decrypt_credential('MISSING', 'a', 'b') if err then error(err) end",
        &Webhook::default(),
    )
    .unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::CryptoKeyNotFound);
    assert!(
        error.message.contains("crypto key not found: MISSING"),
        "{error}"
    );
    assert!(!error.is_retryable());
}

#[test]
fn keys_are_never_visible_to_scripts() {
    let mut engine = engine_with_crypto(keys(&vectors()));
    let request = run_on(
        &mut engine,
        "local n = 0 for k, v in pairs(crypto) do n = n + 1 end \
         request.body = n .. type(crypto.keys) .. tostring(config.key) .. tostring(os.getenv)",
        &Webhook::default(),
    )
    .unwrap();
    assert_eq!(request.body.unwrap(), b"1nilnilnil");
}

#[test]
fn malformed_pem_is_an_error_naming_the_variable() {
    let error = CryptoKeys::from_env([(
        "HOWK_LUA_CRYPTO_BROKEN",
        "-----BEGIN PRIVATE KEY-----\nnope\n",
    )])
    .unwrap_err();
    assert_eq!(error.variable, "HOWK_LUA_CRYPTO_BROKEN");
    assert!(
        error.to_string().contains("HOWK_LUA_CRYPTO_BROKEN"),
        "{error}"
    );
}

#[test]
fn pem_with_escaped_newlines_loads() {
    let vectors = vectors();
    let pem = vectors["keys"]["PRIMARY"]
        .as_str()
        .unwrap()
        .replace('\n', "\\n");
    let keys = CryptoKeys::from_env([("HOWK_LUA_CRYPTO_PRIMARY", pem)]).unwrap();
    assert_eq!(keys.names().collect::<Vec<_>>(), ["PRIMARY"]);
}

#[test]
fn a_scoped_key_serves_only_its_namespaces_and_looks_missing_to_others() {
    let vectors = vectors();
    let vector = &vectors["vectors"][0];
    let name = vector["key_name"].as_str().unwrap().to_owned();
    let scopes = std::collections::BTreeMap::from([(name.to_lowercase(), vec!["music".into()])]);
    let mut settings = LuaConfig::default().engine_settings(Arc::new(|_| None));
    settings.modules.push(Arc::new(CryptoModule::new(
        keys(&vectors).with_scopes(&scopes),
    )));
    let mut engine = LuaEngine::new(settings);
    let webhook = |config_id: &str| Webhook {
        config_id: config_id.into(),
        ..Webhook::default()
    };

    let allowed = run_on(&mut engine, &decrypt_script(vector), &webhook("music:10")).unwrap();
    assert_eq!(
        allowed.body.as_deref(),
        Some(vector["plaintext"].as_str().unwrap().as_bytes())
    );
    let refused = run_on(&mut engine, &decrypt_script(vector), &webhook("shop:1")).unwrap();
    let body = String::from_utf8(refused.body.unwrap()).unwrap();
    assert_eq!(body, format!("ERR:crypto key not found: {name}"));
    // Raised, it is the same error type as a key that does not exist.
    let error = run_on(
        &mut engine,
        &format!(
            "assert(crypto.decrypt_credential({name:?}, {:?}, {:?}))",
            vector["sym_key_b64"].as_str().unwrap(),
            vector["data_b64"].as_str().unwrap()
        ),
        &webhook("shop:1"),
    )
    .unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::CryptoKeyNotFound);
}

#[test]
fn the_scopes_variable_is_not_taken_for_a_key() {
    let keys =
        CryptoKeys::from_env([("HOWK_LUA_CRYPTO_KEY_SCOPES", r#"{"PARTNER": ["shop"]}"#)]).unwrap();
    assert_eq!(keys.names().count(), 0);
}
