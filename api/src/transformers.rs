//! Incoming transformers (SPEC §7): the scripts behind `POST /incoming/:name`, loaded from
//! `transformer.script_dirs` and reloaded on SIGHUP and when their files change.
//!
//! A transformer `name` is `name.lua` (`^[a-z0-9][a-z0-9_-]*$`), with an optional `name.json`
//! (its `config`; `allowed_domains` limits where `howk.post` may send) and an optional
//! `name.passwd` (Basic auth, `user:bcrypt-hash` or `user:plaintext` per line, `#` comments) in
//! the same directory or in one of `transformer.passwd_dirs`. With several script directories
//! the first holding a name wins.
//!
//! Fail closed: a transformer whose `name.json` or `name.passwd` cannot be read or parsed is
//! kept, but answers 500 naming the file — never served without its credentials or its domain
//! list. A script that does not compile answers 422 `script_syntax_error` like any script error.
//!
//! Reloads swap the whole set at once; requests running keep the version they started with.
//! Watching is a poll of the files' names, sizes and modification times every
//! `transformer.reload_interval` (cheap for a directory of scripts, and it works on every
//! filesystem, network mounts and Kubernetes ConfigMap symlink swaps included).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use howk_processor::lua::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `transformer.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    /// Serve `POST /incoming/:name`. Default false (404, as HOWK).
    pub enabled: bool,
    /// Where `name.lua` (and `name.json`, `name.passwd`) are read from. Default none.
    pub script_dirs: Vec<PathBuf>,
    /// More places for `name.passwd`, when it is not beside the script. Default none.
    pub passwd_dirs: Vec<PathBuf>,
    /// How often the directories are checked for changes; 0 turns the watch off (SIGHUP still
    /// reloads). Default 2s.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            script_dirs: Vec::new(),
            passwd_dirs: Vec::new(),
            reload_interval: Duration::from_secs(2),
        }
    }
}

/// One Basic-auth user of a transformer.
enum Credential {
    Bcrypt { user: String, hash: String },
    Plain { user: String, password: String },
}

/// One loaded transformer.
pub struct Transformer {
    pub name: String,
    pub script: Script,
    pub allowed_domains: Arc<Vec<String>>,
    /// `None`: no `name.passwd`, open.
    users: Option<Vec<Credential>>,
    /// Why it cannot serve (its json or passwd file is broken).
    pub problem: Option<String>,
    /// Credentials that verified (SHA-256 of user and password): bcrypt costs tens of
    /// milliseconds by design, and a sender posts with the same credentials again and again.
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl Transformer {
    pub fn needs_auth(&self) -> bool {
        self.users.is_some()
    }

    /// Whether `user:password` is one of its credentials. Blocking (bcrypt): run it off the
    /// reactor.
    pub fn check_credentials(&self, user: &str, password: &str) -> bool {
        let Some(users) = &self.users else {
            return true;
        };
        let digest: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if self
            .verified
            .lock()
            .expect("verified lock")
            .contains(&digest)
        {
            return true;
        }
        let ok = users.iter().any(|credential| match credential {
            Credential::Bcrypt { user: u, hash } => {
                u == user && bcrypt::verify(password, hash).unwrap_or(false)
            }
            Credential::Plain {
                user: u,
                password: p,
            } => u == user && crate::constant_time_eq(p.as_bytes(), password.as_bytes()),
        });
        if ok {
            self.verified.lock().expect("verified lock").insert(digest);
        }
        ok
    }
}

/// What the directories held at one load.
#[derive(Default)]
struct Loaded {
    by_name: HashMap<String, Arc<Transformer>>,
    fingerprint: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

/// The transformers of this process.
pub struct Transformers {
    config: TransformerConfig,
    loaded: RwLock<Arc<Loaded>>,
}

/// Whether `name` is a transformer name.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl Transformers {
    /// Loads what the directories hold now.
    pub fn load(config: TransformerConfig) -> Arc<Self> {
        let transformers = Arc::new(Self {
            config,
            loaded: RwLock::new(Arc::default()),
        });
        if transformers.config.enabled {
            transformers.reload();
        }
        transformers
    }

    /// Off: `/incoming` answers 404.
    pub fn disabled() -> Arc<Self> {
        Self::load(TransformerConfig::default())
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    pub fn get(&self, name: &str) -> Option<Arc<Transformer>> {
        let loaded = self.loaded.read().expect("transformers lock").clone();
        loaded.by_name.get(name).cloned()
    }

    /// How many are loaded.
    pub fn len(&self) -> usize {
        self.loaded.read().expect("transformers lock").by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the directories again and swaps the set.
    pub fn reload(&self) {
        let loaded = load_dirs(&self.config);
        let broken: Vec<&str> = loaded
            .by_name
            .values()
            .filter(|t| t.problem.is_some())
            .map(|t| t.name.as_str())
            .collect();
        if broken.is_empty() {
            tracing::info!(count = loaded.by_name.len(), "transformer scripts loaded");
        } else {
            tracing::error!(
                count = loaded.by_name.len(),
                ?broken,
                "transformer scripts loaded; some cannot serve (see the errors above)"
            );
        }
        *self.loaded.write().expect("transformers lock") = Arc::new(loaded);
    }

    /// Whether the files changed since the last load.
    fn changed(&self) -> bool {
        let current = fingerprint(&self.config);
        self.loaded.read().expect("transformers lock").fingerprint != current
    }

    /// Reloads on SIGHUP and, every `reload_interval`, when the files changed. Runs until the
    /// runtime ends.
    pub fn spawn_reloaders(self: &Arc<Self>) {
        if !self.config.enabled {
            return;
        }
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(mut hangups) => {
                    let transformers = Arc::clone(self);
                    tokio::spawn(async move {
                        while hangups.recv().await.is_some() {
                            tracing::info!("SIGHUP: reloading transformer scripts");
                            let transformers = Arc::clone(&transformers);
                            let _ =
                                tokio::task::spawn_blocking(move || transformers.reload()).await;
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP"),
            }
        }
        let interval = self.config.reload_interval;
        if interval.is_zero() {
            return;
        }
        let transformers = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let transformers = Arc::clone(&transformers);
                let _ = tokio::task::spawn_blocking(move || {
                    if transformers.changed() {
                        tracing::info!("transformer files changed: reloading");
                        transformers.reload();
                    }
                })
                .await;
            }
        });
    }
}

/// Every file of the directories: path, size, modification time; sorted.
fn fingerprint(config: &TransformerConfig) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files = Vec::new();
    for dir in config.script_dirs.iter().chain(&config.passwd_dirs) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Follows symlinks: a ConfigMap swaps its files by relinking.
            let path = entry.path();
            if let Ok(meta) = std::fs::metadata(&path) {
                files.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    files.sort();
    files
}

fn load_dirs(config: &TransformerConfig) -> Loaded {
    // The fingerprint first: a change during the load shows up at the next check.
    let fingerprint = fingerprint(config);
    let mut by_name = HashMap::new();
    for dir in &config.script_dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(dir = %dir.display(), %error, "cannot read a transformer.script_dirs directory");
                continue;
            }
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        paths.sort();
        for path in paths {
            if path.extension().and_then(|e| e.to_str()) != Some("lua") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !valid_name(name) {
                tracing::warn!(file = %path.display(),
                    "transformer file ignored: names are [a-z0-9][a-z0-9_-]*");
                continue;
            }
            if by_name.contains_key(name) {
                tracing::warn!(file = %path.display(),
                    "transformer file ignored: an earlier script_dirs entry has the name");
                continue;
            }
            match load_one(config, dir, name, &path) {
                Ok(transformer) => {
                    by_name.insert(name.to_owned(), Arc::new(transformer));
                }
                Err(error) => {
                    tracing::error!(file = %path.display(), %error, "cannot read a transformer script");
                }
            }
        }
    }
    Loaded {
        by_name,
        fingerprint,
    }
}

fn load_one(
    config: &TransformerConfig,
    dir: &Path,
    name: &str,
    path: &Path,
) -> std::io::Result<Transformer> {
    let code = std::fs::read_to_string(path)?;
    let mut problem = None;
    let mut fail = |message: String| {
        tracing::error!(transformer = name, "{message}");
        problem.get_or_insert(message);
    };

    let json_path = dir.join(format!("{name}.json"));
    let script_config = match std::fs::read(&json_path) {
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(value @ serde_json::Value::Object(_)) => Some(value),
            Ok(_) => {
                fail(format!("{} is not a JSON object", json_path.display()));
                None
            }
            Err(error) => {
                fail(format!(
                    "{} is not valid JSON: {error}",
                    json_path.display()
                ));
                None
            }
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            fail(format!("cannot read {}: {error}", json_path.display()));
            None
        }
    };
    let allowed_domains = match script_config
        .as_ref()
        .and_then(|c| c.get("allowed_domains"))
    {
        None => Vec::new(),
        Some(serde_json::Value::Array(list)) => {
            let domains: Vec<String> = list
                .iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect();
            if domains.len() != list.len() || domains.is_empty() {
                fail(format!(
                    "{}: allowed_domains must be a non-empty list of host names",
                    json_path.display()
                ));
            }
            domains
        }
        Some(_) => {
            fail(format!(
                "{}: allowed_domains must be a list of host names",
                json_path.display()
            ));
            Vec::new()
        }
    };

    let passwd_path = std::iter::once(dir)
        .chain(config.passwd_dirs.iter().map(PathBuf::as_path))
        .map(|d| d.join(format!("{name}.passwd")))
        .find(|p| p.exists());
    let users = match passwd_path {
        None => None,
        Some(passwd_path) => match std::fs::read_to_string(&passwd_path) {
            Ok(text) => match parse_passwd(&text) {
                Ok(users) => Some(users),
                Err(line) => {
                    fail(format!(
                        "{} line {line} is not user:password (or its bcrypt hash is malformed)",
                        passwd_path.display()
                    ));
                    Some(Vec::new())
                }
            },
            Err(error) => {
                fail(format!("cannot read {}: {error}", passwd_path.display()));
                Some(Vec::new())
            }
        },
    };

    Ok(Transformer {
        name: name.to_owned(),
        script: Script::new(code, script_config),
        allowed_domains: Arc::new(allowed_domains),
        users,
        problem,
        verified: Mutex::new(HashSet::new()),
    })
}

/// `user:hash` lines: bcrypt (`$2a$`, `$2b$`, `$2y$`) or plaintext. `Err(line number)` for a
/// line without a colon, or a bcrypt hash that is not `$2?$<cost>$<53 characters>` (it could
/// never verify: the file is broken, not the caller's password).
fn parse_passwd(text: &str) -> Result<Vec<Credential>, usize> {
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, secret)) = line.split_once(':') else {
            return Err(n + 1);
        };
        let user = user.to_owned();
        users.push(
            if ["$2a$", "$2b$", "$2y$"]
                .iter()
                .any(|p| secret.starts_with(p))
            {
                let well_formed = secret.len() == 60
                    && secret.as_bytes()[4..6].iter().all(u8::is_ascii_digit)
                    && secret.as_bytes()[6] == b'$';
                if !well_formed {
                    return Err(n + 1);
                }
                Credential::Bcrypt {
                    user,
                    hash: secret.to_owned(),
                }
            } else {
                Credential::Plain {
                    user,
                    password: secret.to_owned(),
                }
            },
        );
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn config(dirs: &[&Path]) -> TransformerConfig {
        TransformerConfig {
            enabled: true,
            script_dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            ..TransformerConfig::default()
        }
    }

    #[test]
    fn names_follow_howk() {
        for good in ["a", "stripe-webhook", "billing_v2", "9lives"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-a", "_a", "A", "a.b", "a/b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn scripts_configs_and_credentials_load() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let dir = dir_with(&[
            ("open.lua", "howk.post('https://a.example/x', {})"),
            ("guarded.lua", "-- guarded"),
            (
                "guarded.json",
                r#"{"allowed_domains": ["a.example"], "x": 1}"#,
            ),
            (
                "guarded.passwd",
                &format!("# users\nadmin:{hash}\ndev:devpass\n"),
            ),
            ("Bad Name.lua", "--"),
            ("notes.txt", "--"),
        ]);
        let transformers = Transformers::load(config(&[dir.path()]));
        assert_eq!(transformers.len(), 2);
        let open = transformers.get("open").unwrap();
        assert!(!open.needs_auth());
        assert!(open.problem.is_none());
        let guarded = transformers.get("guarded").unwrap();
        assert_eq!(*guarded.allowed_domains, ["a.example"]);
        assert_eq!(guarded.script.config.as_deref().unwrap()["x"], 1);
        assert!(guarded.check_credentials("admin", "s3cret"));
        assert!(
            guarded.check_credentials("admin", "s3cret"),
            "from the cache"
        );
        assert!(guarded.check_credentials("dev", "devpass"));
        assert!(!guarded.check_credentials("admin", "wrong"));
        assert!(!guarded.check_credentials("dev", "s3cret"));
        assert!(!guarded.check_credentials("nobody", "devpass"));
    }

    #[test]
    fn broken_companion_files_fail_closed() {
        let dir = dir_with(&[
            ("a.lua", "--"),
            ("a.json", "{not json"),
            ("b.lua", "--"),
            ("b.passwd", "no colon here"),
            ("d.lua", "--"),
            ("d.passwd", "admin:$2b$12$cut-short"),
            ("c.lua", "--"),
            ("c.json", r#"{"allowed_domains": "a.example"}"#),
        ]);
        let transformers = Transformers::load(config(&[dir.path()]));
        for name in ["a", "b", "c", "d"] {
            let transformer = transformers.get(name).unwrap();
            assert!(transformer.problem.is_some(), "{name}");
        }
        let b = transformers.get("b").unwrap();
        assert!(b.needs_auth(), "a broken passwd file still guards");
        assert!(!b.check_credentials("no colon here", ""));
    }

    #[test]
    fn the_first_directory_wins_and_passwd_dirs_are_searched() {
        let first = dir_with(&[("x.lua", "-- first")]);
        let second = dir_with(&[("x.lua", "-- second"), ("y.lua", "--")]);
        let passwd = dir_with(&[("y.passwd", "u:p")]);
        let mut config = config(&[first.path(), second.path()]);
        config.passwd_dirs = vec![passwd.path().to_path_buf()];
        let transformers = Transformers::load(config);
        assert_eq!(&*transformers.get("x").unwrap().script.code, "-- first");
        assert!(transformers.get("y").unwrap().needs_auth());
    }

    #[test]
    fn a_reload_sees_new_changed_and_removed_files() {
        let dir = dir_with(&[("a.lua", "-- one")]);
        let transformers = Transformers::load(config(&[dir.path()]));
        assert!(!transformers.changed());
        std::fs::write(dir.path().join("b.lua"), "--").unwrap();
        std::fs::write(dir.path().join("a.lua"), "-- two, longer").unwrap();
        assert!(transformers.changed());
        transformers.reload();
        assert_eq!(
            &*transformers.get("a").unwrap().script.code,
            "-- two, longer"
        );
        assert!(transformers.get("b").is_some());
        std::fs::remove_file(dir.path().join("b.lua")).unwrap();
        transformers.reload();
        assert!(transformers.get("b").is_none());
        assert!(Transformers::disabled().get("a").is_none());
    }
}
