//! Process start-up shared by the CLI commands: logging, allocator tuning, store + migrations,
//! artifacts, the admin key bootstrap, the HTTP server and the worker pool, and signals.

use crate::api::{self, AppState};
use crate::artifacts::Artifacts;
use crate::config::{LogArgs, LogFormat, ServerArgs, StoreArgs, WorkerArgs};
use crate::queue::{worker_name, Worker};
use crate::store::Store;
use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

pub fn init_logging(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The process-wide Prometheus recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets =
                [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &buckets)
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Open the store (running migrations) and the artifact store.
pub async fn open(args: &StoreArgs) -> anyhow::Result<(Store, Artifacts)> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let store = Store::connect(&args.database_url()).await?;
    store.migrate().await.context("running migrations")?;
    let artifacts = Artifacts::local(&args.artifacts_dir())?;
    Ok((store, artifacts))
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        t.cancel();
    });
    token
}

/// glibc returns large freed buffers to the OS at once and maps fresh ones for every big
/// allocation; tensor code allocates many tens-of-MB buffers, so keep them (docs/design-notes.md).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024 * 1024);
    }
}

/// The service: its store and artifacts, wired into the HTTP API and the worker pool the same
/// way for `serve`, `worker` and the test harness.
#[derive(Clone)]
pub struct Service {
    pub store: Store,
    pub artifacts: Artifacts,
}

impl Service {
    /// Opens the store (running migrations) and the artifact store.
    pub async fn open(args: &StoreArgs) -> anyhow::Result<Service> {
        let (store, artifacts) = open(args).await?;
        Ok(Service { store, artifacts })
    }

    /// The HTTP API over this service.
    pub fn router(&self, server: &ServerArgs, worker: &WorkerArgs) -> axum::Router {
        api::router(AppState {
            store: self.store.clone(),
            artifacts: self.artifacts.clone(),
            max_upload_bytes: server.max_upload_bytes,
            max_dataset_bytes: server.max_dataset_bytes,
            max_attempts: worker.max_attempts,
            metrics: metrics_handle(),
        })
    }

    /// Serves the API on the listener (when given) and runs `worker.workers` job slots until
    /// `shutdown` is cancelled; then stops taking requests and drains the workers.
    pub async fn run(
        self,
        http: Option<(tokio::net::TcpListener, ServerArgs)>,
        worker: WorkerArgs,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        metrics_handle();
        let router = http.map(|(listener, server)| (listener, self.router(&server, &worker)));
        let workers = (worker.workers > 0).then(|| {
            let w = Arc::new(Worker {
                store: self.store.clone(),
                artifacts: self.artifacts.clone(),
                args: worker,
                owner: worker_name(),
            });
            tokio::spawn(w.run(shutdown.clone()))
        });
        if let Some((listener, router)) = router {
            let s = shutdown.clone();
            axum::serve(listener, router).with_graceful_shutdown(async move { s.cancelled().await }).await?;
        }
        if let Some(w) = workers {
            w.await?;
        }
        Ok(())
    }
}

/// `secateur serve`: API and (unless `workers` is 0) workers in one process.
pub async fn serve(store_args: StoreArgs, server: ServerArgs, worker: WorkerArgs) -> anyhow::Result<()> {
    let service = Service::open(&store_args).await?;
    let key_path = store_args.data_dir.join("admin.key");
    if crate::api::auth::bootstrap_admin_key(&service.store, &key_path).await? {
        tracing::info!(path = %key_path.display(), "created the first API key (tenant \"default\"); it is in this file, readable only by this user");
    }
    let listener =
        tokio::net::TcpListener::bind(server.listen).await.with_context(|| format!("binding {}", server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, url = %format!("http://{addr}"), docs = %format!("http://{addr}/docs"), "listening");
    tracing::info!(
        "authenticate with: Authorization: Bearer $(cat {}) (or create a key: secateur apikey create --tenant NAME)",
        key_path.display()
    );
    service.run(Some((listener, server)), worker, shutdown_signal()).await
}

/// `secateur worker`: workers only.
pub async fn worker(store_args: StoreArgs, worker: WorkerArgs) -> anyhow::Result<()> {
    let service = Service::open(&store_args).await?;
    service.run(None, worker, shutdown_signal()).await
}
