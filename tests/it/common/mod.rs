//! Test harness: a real server on port 0 over a fresh database (a new SQLite file, or a new
//! PostgreSQL database per test), with helpers to call it. Zero-to-production style.
#![allow(dead_code)]

pub mod minilm;
pub mod refenv;

use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use secateur::app::Service;
use secateur::artifacts::Artifacts;
use secateur::config::{ServerArgs, WorkerArgs};
use secateur::engine::testing::TinyModel;
use secateur::store::Store;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("SECATEUR_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database for one test: a new SQLite file in `dir`, or a new PostgreSQL database,
/// dropped when this guard is.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
}

pub async fn fresh_database(db: Db, dir: &std::path::Path) -> TestDb {
    match db {
        Db::Sqlite => TestDb { url: format!("sqlite://{}?mode=rwc", dir.join("secateur.db").display()), pg_name: None },
        Db::Postgres => {
            use sqlx::Connection;
            let admin = pg_admin_url();
            let name = format!("secateur_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL is not reachable (set SECATEUR_TEST_DATABASE_URL)");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
            let (base, _) = admin.rsplit_once('/').unwrap();
            TestDb { url: format!("{base}/{name}"), pg_name: Some(name) }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        // On a thread of its own: the test's runtime may be the one being dropped.
        let dropped = std::thread::spawn(move || {
            use sqlx::Connection;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("dropping a test database failed: {e}");
        }
    }
}

pub struct TestOptions {
    pub workers: usize,
    pub max_upload_bytes: u64,
    pub step_delay_ms: u64,
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions { workers: 1, max_upload_bytes: 512 * 1024 * 1024, step_delay_ms: 0 }
    }
}

pub struct TestApp {
    pub addr: String,
    pub key: String,
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    /// Last: dropped after the service was told to stop.
    _db: TestDb,
}

pub fn worker_args(workers: usize, step_delay_ms: u64) -> WorkerArgs {
    WorkerArgs {
        workers,
        lease_seconds: 5,
        heartbeat_ms: 200,
        poll_ms: 50,
        max_attempts: 3,
        shutdown_grace_seconds: 2,
        job_step_delay_ms: step_delay_ms,
        checkpoint_interval_secs: 0,
    }
}

impl TestApp {
    pub async fn spawn(db: Db) -> TestApp {
        Self::spawn_with(db, TestOptions::default()).await
    }

    pub async fn spawn_with(db: Db, opts: TestOptions) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_database(db, dir.path()).await;
        let store = Store::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let artifacts = Artifacts::local(&dir.path().join("artifacts")).unwrap();
        let key = secateur::api::auth::create_key(&store, "tenant-a", false).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = ServerArgs {
            listen: listener.local_addr().unwrap(),
            max_upload_bytes: opts.max_upload_bytes,
            max_dataset_bytes: opts.max_upload_bytes,
        };
        let service = Service { store: store.clone(), artifacts };
        let run =
            service.run(Some((listener, server)), worker_args(opts.workers, opts.step_delay_ms), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = run.await {
                eprintln!("the test service stopped with an error: {e:#}");
            }
        });
        TestApp { addr, key, store, dir, client: reqwest::Client::new(), shutdown, _db: db }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    pub async fn new_key(&self, tenant: &str) -> String {
        secateur::api::auth::create_key(&self.store, tenant, false).await.unwrap()
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(&self.key)
    }
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(&self.key)
    }
    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path)).bearer_auth(&self.key)
    }

    pub async fn upload_model(&self, files: Vec<(&str, Vec<u8>)>) -> reqwest::Response {
        self.upload_model_as(&self.key, files).await
    }

    pub async fn upload_model_as(&self, key: &str, files: Vec<(&str, Vec<u8>)>) -> reqwest::Response {
        let mut form = Form::new();
        for (name, bytes) in files {
            form = form.part(name.to_string(), Part::bytes(bytes).file_name(name.to_string()));
        }
        self.client.post(self.url("/v1/models")).bearer_auth(key).multipart(form).send().await.unwrap()
    }

    /// Upload a tiny model; returns its id.
    pub async fn create_model(&self, m: &TinyModel) -> String {
        let r = self.upload_model(model_files(m)).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    pub async fn upload_dataset(&self, file: Vec<u8>, format: &str, task: Option<&str>) -> reqwest::Response {
        let mut form = Form::new().part("file", Part::bytes(file).file_name("data")).text("format", format.to_string());
        if let Some(t) = task {
            form = form.text("task", t.to_string());
        }
        self.post("/v1/datasets").multipart(form).send().await.unwrap()
    }

    pub async fn submit(&self, spec: &Value) -> reqwest::Response {
        self.post("/v1/jobs").json(spec).send().await.unwrap()
    }

    /// Submit a job that must be accepted; returns its id.
    pub async fn submit_ok(&self, spec: &Value) -> String {
        let r = self.submit(spec).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    pub async fn job(&self, id: &str) -> Value {
        self.get(&format!("/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap()
    }

    /// Poll until the job is in one of `statuses` (panics after `timeout`).
    pub async fn wait_for(&self, id: &str, statuses: &[&str], timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let j = self.job(id).await;
            if statuses.contains(&j["status"].as_str().unwrap_or("")) {
                return j;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {id} did not reach {statuses:?}: {j}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn artifact(&self, job: &str, name: &str) -> Vec<u8> {
        let r = self.get(&format!("/v1/jobs/{job}/artifacts/{name}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "artifact {name}");
        r.bytes().await.unwrap().to_vec()
    }

    /// Files under the artifact store (relative paths).
    pub fn stored_files(&self) -> Vec<String> {
        fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        walk(base, &p, out);
                    } else {
                        out.push(p.strip_prefix(base).unwrap().display().to_string());
                    }
                }
            }
        }
        let base: PathBuf = self.dir.path().join("artifacts");
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An SST-2-layout TSV over the tiny vocabulary: label 1 when `w9` occurs.
pub fn toy_sst2(n: usize, seed: usize) -> Vec<u8> {
    let mut s = String::from("sentence\tlabel\n");
    for i in 0..n {
        // Both labels at every length (else length parity would give the label away).
        let len = 3 + ((i / 2) * 7 + seed) % 8;
        let mut words: Vec<String> = (0..len).map(|j| format!("w{}", 10 + (i * 13 + j * 5 + seed) % 50)).collect();
        let label = i % 2;
        if label == 1 {
            words[i % len] = "w9".into();
        }
        s.push_str(&format!("{}\t{label}\n", words.join(" ")));
    }
    s.into_bytes()
}

pub fn model_files(m: &TinyModel) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", m.config_json().into_bytes()),
        ("model.safetensors", m.safetensors()),
        ("tokenizer.json", m.tokenizer_json().into_bytes()),
    ]
}

pub async fn problem(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let ctype = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(ctype, "application/problem+json", "status {status}, body {body}");
    assert_eq!(body["status"].as_u64(), Some(status.as_u16() as u64), "{body}");
    assert!(body["type"].as_str().unwrap().starts_with("urn:secateur:problem:"), "{body}");
    (status, body)
}

/// Run an async test body against both backends: `backend_tests!(name);` expects
/// `async fn name(db: Db)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::Db::Sqlite).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::Db::Postgres).await } )* }
    };
}
