//! Configuration: command-line flags, each also settable through a `SECATEUR_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Options every command that touches the store shares.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// Directory holding the SQLite database, the local artifact store and `admin.key`.
    #[arg(long, env = "SECATEUR_DATA_DIR", default_value = "./secateur-data", global = true)]
    pub data_dir: PathBuf,
    /// Database URL. Unset: embedded SQLite at `<data-dir>/secateur.db`.
    /// `postgres://user@host/db` selects PostgreSQL.
    #[arg(long, env = "SECATEUR_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Where artifacts live. Unset: `<data-dir>/artifacts` on the local filesystem.
    #[arg(long, env = "SECATEUR_ARTIFACTS_DIR", global = true)]
    pub artifacts_dir: Option<PathBuf>,
}

impl StoreArgs {
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("secateur.db").display()),
        }
    }
    pub fn artifacts_dir(&self) -> PathBuf {
        self.artifacts_dir.clone().unwrap_or_else(|| self.data_dir.join("artifacts"))
    }
}

/// Worker pool options (used by `serve` and `worker`).
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Number of jobs one process runs at once (each on its own blocking thread).
    #[arg(long, env = "SECATEUR_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// How long a claimed job's lease lasts without a heartbeat before another worker may claim it.
    #[arg(long, env = "SECATEUR_LEASE_SECONDS", default_value_t = 30)]
    pub lease_seconds: u64,
    /// How often a running job renews its lease and checks for cancellation.
    #[arg(long, env = "SECATEUR_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// How often an idle worker polls the queue.
    #[arg(long, env = "SECATEUR_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,
    /// Claims of one job (first run plus re-claims after lost leases) before it ends `failed`.
    #[arg(long, env = "SECATEUR_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// On SIGTERM/SIGINT, how long running jobs may go on before they are put back in the queue.
    #[arg(long, env = "SECATEUR_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// Fault-injection knob for tests and demos: sleep this long at every progress step of a job.
    #[arg(long, env = "SECATEUR_JOB_STEP_DELAY_MS", default_value_t = 0, hide_short_help = true)]
    pub job_step_delay_ms: u64,
    /// Least seconds between two checkpoints of a training stage (a job claimed again resumes
    /// from its last checkpoint); checkpoints are also at most one per tenth of a stage.
    #[arg(long, env = "SECATEUR_CHECKPOINT_INTERVAL_SECS", default_value_t = 30)]
    pub checkpoint_interval_secs: u64,
}

impl WorkerArgs {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds.max(1))
    }
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(50))
    }
}

/// HTTP server options.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, env = "SECATEUR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Largest accepted upload (one model or dataset request), in bytes.
    #[arg(long, env = "SECATEUR_MAX_UPLOAD_BYTES", default_value_t = 4 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Largest dataset file parsed on upload, in bytes (datasets are validated in memory).
    #[arg(long, env = "SECATEUR_MAX_DATASET_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_dataset_bytes: u64,
}

#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "SECATEUR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "SECATEUR_LOG", default_value = "info", global = true)]
    pub log: String,
}
