//! `crypto.decrypt_credential(key_name, sym_key_b64, data_b64)` → plaintext | `(nil, err)`
//! (SPEC §4): RSA-OAEP (SHA-256, MGF1-SHA-256) unwraps an AES key with the private key
//! `HOWK_LUA_CRYPTO_{KEY_NAME}`, then AES-GCM (128/192/256-bit) decrypts
//! `nonce(12) ‖ ciphertext ‖ tag(16)`. Compatible with Node.js `crypto.publicEncrypt` (OAEP,
//! `oaepHash: 'sha256'`) + `aes-256-gcm`; `processor/tests/fixtures/crypto/` holds vectors made by
//! Node.
//!
//! Keys are loaded and validated at startup — a bad PEM stops the process with a message naming
//! the variable — and never reach Lua: a script names a key, it cannot read one. An unknown key
//! name returns `(nil, "crypto key not found: NAME")` and, if the script then fails, the webhook
//! is dead-lettered `crypto_key_not_found`.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use aes_gcm::aead::Aead;
use aes_gcm::aead::consts::U12;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mlua::{Lua, MultiValue, Table, Value};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::sha2::Sha256;
use rsa::{Oaep, PrivateKey};

use super::{LuaModule, ModuleContext};

/// Environment variables holding private keys: `HOWK_LUA_CRYPTO_{NAME}`.
pub const KEY_VARIABLE_PREFIX: &str = "HOWK_LUA_CRYPTO_";

/// `lua.crypto_key_scopes` through the environment; under the key prefix, but not a key.
pub const SCOPES_VARIABLE: &str = "HOWK_LUA_CRYPTO_KEY_SCOPES";

type Aes192Gcm = AesGcm<aes_gcm::aes::Aes192, U12>;

/// A key variable that does not hold a usable key.
#[derive(Debug, thiserror::Error)]
#[error(
    "environment variable {variable} is not a PEM RSA private key (PKCS#1 or PKCS#8): {reason}"
)]
pub struct CryptoKeyError {
    pub variable: String,
    pub reason: String,
}

/// The private keys, by upper-case name. `Debug` shows names only.
#[derive(Default, Clone)]
pub struct CryptoKeys {
    keys: HashMap<String, Arc<PrivateKey>>,
    /// Upper-case key name → namespaces allowed to use it; a key without an entry serves all.
    scopes: Arc<HashMap<String, Vec<String>>>,
}

impl std::fmt::Debug for CryptoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.keys.keys().collect();
        names.sort();
        f.debug_struct("CryptoKeys").field("names", &names).finish()
    }
}

impl CryptoKeys {
    /// Loads every `HOWK_LUA_CRYPTO_{NAME}` among `variables`; the first bad one is an error.
    pub fn from_env<I, K, V>(variables: I) -> Result<Self, CryptoKeyError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut keys = HashMap::new();
        for (variable, value) in variables {
            let variable = variable.as_ref();
            let Some(name) = variable.strip_prefix(KEY_VARIABLE_PREFIX) else {
                continue;
            };
            if variable == SCOPES_VARIABLE {
                continue;
            }
            let key = parse_pem(value.as_ref()).map_err(|reason| CryptoKeyError {
                variable: variable.to_owned(),
                reason,
            })?;
            keys.insert(name.to_ascii_uppercase(), Arc::new(key));
        }
        Ok(Self {
            keys,
            scopes: Arc::default(),
        })
    }

    /// Limits keys to namespaces (`lua.crypto_key_scopes`: key name → namespaces).
    pub fn with_scopes<'a>(
        mut self,
        scopes: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>,
    ) -> Self {
        self.scopes = Arc::new(
            scopes
                .into_iter()
                .map(|(name, namespaces)| (name.to_ascii_uppercase(), namespaces.clone()))
                .collect(),
        );
        self
    }

    /// Whether scripts of `namespace` may use the key `name` (true for an unscoped key).
    pub fn allowed(&self, name: &str, namespace: &str) -> bool {
        self.scopes
            .get(&name.to_ascii_uppercase())
            .is_none_or(|namespaces| namespaces.iter().any(|ns| ns == namespace || ns == "*"))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Unwraps the AES key and decrypts the data; the error says which step failed.
    pub fn decrypt_credential(
        &self,
        name: &str,
        sym_key_b64: &[u8],
        data_b64: &[u8],
    ) -> Result<Vec<u8>, DecryptError> {
        let key = self
            .keys
            .get(&name.to_ascii_uppercase())
            .ok_or_else(|| DecryptError::KeyNotFound(name.to_owned()))?;
        let wrapped = STANDARD.decode(sym_key_b64.trim_ascii()).map_err(|error| {
            DecryptError::Failed(format!("symmetric key is not base64: {error}"))
        })?;
        let data = STANDARD
            .decode(data_b64.trim_ascii())
            .map_err(|error| DecryptError::Failed(format!("data is not base64: {error}")))?;
        let aes_key = key.decrypt(Oaep::<Sha256>::new(), &wrapped).map_err(|_| {
            DecryptError::Failed("cannot unwrap the symmetric key (wrong key or corrupted)".into())
        })?;
        if data.len() < 12 + 16 {
            return Err(DecryptError::Failed(
                "data is shorter than nonce (12) + tag (16)".into(),
            ));
        }
        let (nonce, sealed) = data.split_at(12);
        let nonce = Nonce::<U12>::try_from(nonce).expect("split at 12");
        let opened = match aes_key.len() {
            16 => Aes128Gcm::new_from_slice(&aes_key).map(|c| c.decrypt(&nonce, sealed)),
            24 => Aes192Gcm::new_from_slice(&aes_key).map(|c| c.decrypt(&nonce, sealed)),
            32 => Aes256Gcm::new_from_slice(&aes_key).map(|c| c.decrypt(&nonce, sealed)),
            other => {
                return Err(DecryptError::Failed(format!(
                    "unwrapped key is {other} bytes; AES needs 16, 24 or 32"
                )));
            }
        };
        match opened {
            Ok(Ok(plaintext)) => Ok(plaintext),
            _ => Err(DecryptError::Failed(
                "authentication failed (tampered data or wrong key)".into(),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("crypto key not found: {0}")]
    KeyNotFound(String),
    #[error("{0}")]
    Failed(String),
}

fn parse_pem(pem: &str) -> Result<PrivateKey, String> {
    // Keys passed through .env files often carry `\n` escapes instead of line breaks.
    let pem = if pem.contains('\n') {
        pem.trim().to_owned()
    } else {
        pem.trim().replace("\\n", "\n")
    };
    match PrivateKey::from_pkcs1_pem(&pem) {
        Ok(key) => Ok(key),
        Err(pkcs1) => PrivateKey::from_pkcs8_pem(&pem)
            .map_err(|pkcs8| format!("as PKCS#1: {pkcs1}; as PKCS#8: {pkcs8}")),
    }
}

/// The `crypto` Lua module.
pub struct CryptoModule {
    keys: CryptoKeys,
}

impl CryptoModule {
    pub fn new(keys: CryptoKeys) -> Self {
        Self { keys }
    }
}

impl LuaModule for CryptoModule {
    fn name(&self) -> &'static str {
        "crypto"
    }

    fn build(&self, lua: &Lua, context: &ModuleContext) -> mlua::Result<Table> {
        let module = lua.create_table()?;
        let keys = self.keys.clone();
        let execution = Rc::clone(&context.execution);
        module.raw_set(
            "decrypt_credential",
            lua.create_function(
                move |lua,
                      (name, sym_key, data): (
                    mlua::LuaString,
                    mlua::LuaString,
                    mlua::LuaString,
                )| {
                    let name = name.to_string_lossy();
                    // A key outside the namespace's scope looks exactly like a missing one.
                    let result = if keys.allowed(&name, &execution.namespace()) {
                        keys.decrypt_credential(&name, &sym_key.as_bytes(), &data.as_bytes())
                    } else {
                        Err(DecryptError::KeyNotFound(name.to_string()))
                    };
                    Ok(match result {
                        Ok(plaintext) => {
                            MultiValue::from_iter([Value::String(lua.create_string(plaintext)?)])
                        }
                        Err(error) => {
                            if let DecryptError::KeyNotFound(name) = &error {
                                execution.record_missing_crypto_key(name);
                            }
                            MultiValue::from_iter([
                                Value::Nil,
                                Value::String(lua.create_string(error.to_string())?),
                            ])
                        }
                    })
                },
            )?,
        )?;
        Ok(module)
    }
}
