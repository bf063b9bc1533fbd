//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use howk_processor::lua::EngineSettings;
use howk_processor::lua::pool::EnginePool;
use howk_topology::scripts_table::ScriptsTable;
use howk_topology::stage::status::StatusStores;

use crate::config::ApiConfig;
use crate::ingress::Ingress;
use crate::transformers::Transformers;

/// The topology running in this process, when there is one (`howk run`, `howk dev`); `howk api`
/// alone has none, and answers status and stats with 503.
#[derive(Clone)]
pub struct LocalTopology {
    pub status: StatusStores,
    /// Set once the stream thread has created (and restored) the tasks of its assignment.
    pub tasks_ready: Arc<AtomicBool>,
}

impl LocalTopology {
    pub fn is_ready(&self) -> bool {
        self.tasks_ready.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ApiConfig>,
    pub ingress: Arc<dyn Ingress>,
    /// The API's copy of the scripts table (shared with the topology in the same process).
    pub scripts: ScriptsTable,
    pub topology: Option<LocalTopology>,
    /// Runs `/script/test` with the real engine, modules and limits; `None` when Lua is off.
    pub pool: Option<Arc<EnginePool>>,
    /// For compiling scripts on PUT (no modules needed to check syntax).
    pub engine_settings: EngineSettings,
    pub topics: Topics,
    /// `processing.max_record_bytes` and `retry.max_attempts`, for validating webhooks as the
    /// ingest stage will.
    pub max_record_bytes: usize,
    pub default_max_attempts: u32,
    /// The transformers of `POST /incoming/:name`.
    pub transformers: Arc<Transformers>,
    /// Replay jobs (`/admin/replays`); `None` where no processor runs (`howk api`).
    pub replays: Option<Arc<dyn crate::routes::replays::ReplayService>>,
}

/// The topics the API writes.
#[derive(Clone, Debug)]
pub struct Topics {
    pub pending: Arc<str>,
    pub scripts: Arc<str>,
}
