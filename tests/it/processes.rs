//! Real processes: `secateur serve` and `secateur worker` binaries sharing one database and
//! artifact store. Worker death (SIGKILL), two workers on one PostgreSQL, graceful SIGTERM,
//! and the memory bound of streamed uploads.

use crate::common;

use common::{fresh_database, model_files, Db};
use secateur::engine::testing::TinyModel;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_secateur"))
            .args(args)
            .args(["--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }

    fn logs(&self) -> Vec<Value> {
        self.lines.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    fn wait_log(&self, message: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.logs().into_iter().find(|v| v["message"] == message) {
                return v;
            }
            assert!(Instant::now() < deadline, "no log {message:?}: {:?}", self.lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "process did not exit: {:?}", self.lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak and current resident memory (kB).
    fn memory_kb(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let get =
            |k: &str| s.lines().find(|l| l.starts_with(k)).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        (get("VmHWM:"), get("VmRSS:"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A data dir, a database, an API process (no workers), its key and a client.
struct Cluster {
    dir: tempfile::TempDir,
    api: Proc,
    base: String,
    key: String,
    client: reqwest::Client,
    /// Last: dropped after the processes are gone.
    db: common::TestDb,
}

impl Cluster {
    async fn start(db: Db) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_database(db, dir.path()).await;
        let data = dir.path().to_str().unwrap().to_string();
        let api = Proc::start(&[
            "--data-dir",
            &data,
            "--database-url",
            &db.url,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "0",
        ]);
        let listening = api.wait_log("listening", Duration::from_secs(30));
        let base = format!("http://{}", listening["addr"].as_str().unwrap());
        let key_path = dir.path().join("admin.key");
        let key = std::fs::read_to_string(&key_path).unwrap().trim().to_string();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!api.lines.lock().unwrap().iter().any(|l| l.contains(&key)), "the admin key was logged");
        // Every request is logged with its request id.
        let client = reqwest::Client::new();
        let r = client.get(format!("{base}/v1/models")).bearer_auth(&key).send().await.unwrap();
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !api.logs().iter().any(|l| l["span"]["request_id"] == rid.as_str() && l["status"] == 200) {
            assert!(Instant::now() < deadline, "no log line carries request id {rid}: {:?}", api.lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
        Cluster { dir, api, base, key, client, db }
    }

    fn worker(&self, extra: &[&str]) -> Proc {
        let data = self.dir.path().to_str().unwrap();
        let mut args = vec![
            "--data-dir",
            data,
            "--database-url",
            &self.db.url,
            "worker",
            "--lease-seconds",
            "2",
            "--heartbeat-ms",
            "200",
            "--poll-ms",
            "100",
        ];
        args.extend_from_slice(extra);
        Proc::start(&args)
    }

    async fn upload(&self, m: &TinyModel) -> String {
        self.upload_files(model_files(m)).await
    }

    async fn upload_files(&self, files: Vec<(&'static str, Vec<u8>)>) -> String {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            form = form.part(name, reqwest::multipart::Part::bytes(bytes).file_name(name));
        }
        let r = self
            .client
            .post(format!("{}/v1/models", self.base))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
    }

    async fn submit(&self, model: &str, sparsity: f64) -> String {
        let spec =
            json!({"model_id": model, "pruning": {"method": "magnitude", "scope": "local", "sparsity": sparsity}});
        let r =
            self.client.post(format!("{}/v1/jobs", self.base)).bearer_auth(&self.key).json(&spec).send().await.unwrap();
        assert_eq!(r.status(), 202);
        r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
    }

    async fn job(&self, id: &str) -> Value {
        self.client
            .get(format!("{}/v1/jobs/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_until(&self, id: &str, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.job(id).await;
            if pred(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} stuck: {j}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn artifacts(&self, id: &str) -> Vec<Value> {
        self.client
            .get(format!("{}/v1/jobs/{id}/artifacts", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn report(&self, id: &str) -> Value {
        self.client
            .get(format!("{}/v1/jobs/{id}/artifacts/report.json", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

async fn killed_worker_job_is_finished_by_another(db: Db) {
    let c = Cluster::start(db).await;
    let model = c.upload(&TinyModel::default()).await;
    let job = c.submit(&model, 0.5).await;
    // Worker A is slow (each of the ~15 progress steps sleeps 300 ms).
    let a = c.worker(&["--job-step-delay-ms", "300"]);
    c.wait_until(&job, |j| j["status"] == "running" && j["progress"].as_f64().unwrap() > 0.2, Duration::from_secs(30))
        .await;
    a.signal(libc::SIGKILL);
    drop(a);
    let mid = c.job(&job).await;
    assert_eq!(mid["status"], "running", "{mid}");
    assert_eq!(mid["attempts"], 1);
    let b = c.worker(&[]);
    let done =
        c.wait_until(&job, |j| j["status"] != "running" && j["status"] != "queued", Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "claimed once by each worker");
    let names: Vec<String> = c.artifacts(&job).await.iter().map(|a| a["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        names,
        vec!["config.json", "masks.safetensors", "model.safetensors", "report.json", "tokenizer.json"],
        "nothing lost or duplicated"
    );
    let report = c.report(&job).await;
    assert!((report["totals"]["target_sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-3);
    let claims: Vec<Value> = b.logs().into_iter().filter(|l| l["message"] == "job claimed").collect();
    assert_eq!(claims.len(), 1);
    let list: Value =
        c.client.get(format!("{}/v1/jobs", c.base)).bearer_auth(&c.key).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

async fn sigterm_releases_running_jobs_and_exits_zero(db: Db) {
    let c = Cluster::start(db).await;
    let model = c.upload(&TinyModel::default()).await;
    let job = c.submit(&model, 0.5).await;
    let mut a = c.worker(&["--job-step-delay-ms", "500", "--shutdown-grace-seconds", "1"]);
    c.wait_until(&job, |j| j["status"] == "running", Duration::from_secs(30)).await;
    let queued_later = c.submit(&model, 0.3).await;
    a.signal(libc::SIGTERM);
    let status = a.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{:?}", a.lines.lock().unwrap());
    // Put back, and the attempt does not count; the other job was never claimed.
    let j = c.job(&job).await;
    assert_eq!(j["status"], "queued", "{j}");
    assert_eq!(j["attempts"], 0);
    assert_eq!(c.job(&queued_later).await["status"], "queued");
    let _b = c.worker(&[]);
    for id in [&job, &queued_later] {
        let done =
            c.wait_until(id, |j| j["status"] == "succeeded" || j["status"] == "failed", Duration::from_secs(30)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1);
    }
}

async fn sigterm_lets_a_short_job_finish_within_the_grace_period(db: Db) {
    let c = Cluster::start(db).await;
    let model = c.upload(&TinyModel::default()).await;
    let job = c.submit(&model, 0.5).await;
    let mut a = c.worker(&["--job-step-delay-ms", "100", "--shutdown-grace-seconds", "30"]);
    c.wait_until(&job, |j| j["status"] == "running", Duration::from_secs(30)).await;
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let j = c.job(&job).await;
    assert_eq!(j["status"], "succeeded", "{j}");
}

/// `secateur migrate` and `secateur apikey create` work on the same store as the server; the new
/// key authenticates as its own tenant.
async fn cli_creates_keys_for_new_tenants(db: Db) {
    let c = Cluster::start(db).await;
    c.upload(&TinyModel::default()).await;
    let data = c.dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_secateur"))
            .args(["--data-dir", data, "--database-url", &c.db.url])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["apikey", "create", "--tenant", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("sk_") && key.len() >= 40, "{key}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&key), "the key was logged");
    let r = c.client.get(format!("{}/v1/models", c.base)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["items"].as_array().unwrap().len(),
        0,
        "acme sees nothing of the default tenant"
    );
    let out = run(&["apikey", "create", "--tenant", " "]);
    assert!(!out.status.success());
}

backend_tests!(
    cli_creates_keys_for_new_tenants,
    killed_worker_job_is_finished_by_another,
    sigterm_releases_running_jobs_and_exits_zero,
    sigterm_lets_a_short_job_finish_within_the_grace_period,
);

/// `secateur prune` runs the job's code locally: the same spec gives the same files, byte for
/// byte, as the job's artifacts; a bad spec exits non-zero with the field at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_prune_cli_writes_what_the_job_writes_sqlite() {
    let c = Cluster::start(Db::Sqlite).await;
    let m = TinyModel { layers: 3, ..Default::default() };
    let model = c.upload(&m).await;
    let _w = c.worker(&[]);
    let pruning = json!({"method": "magnitude", "granularity": "neurons", "scope": "global", "sparsity": 0.4});
    let spec = json!({"model_id": model, "pruning": pruning, "export": {"compact": true}});
    let r = c.client.post(format!("{}/v1/jobs", c.base)).bearer_auth(&c.key).json(&spec).send().await.unwrap();
    let job = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let done =
        c.wait_until(&job, |j| j["status"] == "succeeded" || j["status"] == "failed", Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let arts = c.artifacts(&job).await;
    // The same spec, without model_id, against the same files on disk.
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    for (name, bytes) in model_files(&m) {
        std::fs::write(model_dir.join(name), bytes).unwrap();
    }
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&json!({"pruning": pruning, "export": {"compact": true}})).unwrap())
        .unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(["prune", "--model"])
        .arg(&model_dir)
        .arg("--spec")
        .arg(&spec_path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for a in &arts {
        let name = a["name"].as_str().unwrap();
        let bytes = std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), a["sha256"].as_str().unwrap(), "{name} differs");
    }
    let written =
        std::fs::read_dir(&out).unwrap().count() + std::fs::read_dir(out.join("compact")).unwrap().count() - 1;
    assert_eq!(written, arts.len(), "no scratch files left behind");
    std::fs::write(&spec_path, br#"{"pruning": {"method": "magnitude", "sparsity": 1.5}}"#).unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(["prune", "--model"])
        .arg(&model_dir)
        .arg("--spec")
        .arg(&spec_path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("pruning.sparsity"));
}

/// A ≥ 200 MB upload raises the server's peak RSS by less than 64 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_stream_in_bounded_memory_sqlite() {
    let c = Cluster::start(Db::Sqlite).await;
    // Warm up: one small upload, so that start-up allocations are behind us.
    c.upload(&TinyModel::default()).await;
    let big = TinyModel { vocab: 800_000, hidden: 64, heads: 4, ffn: 128, layers: 1, ..Default::default() };
    let files = model_files(&big);
    let size: usize = files.iter().map(|f| f.1.len()).sum();
    assert!(size >= 200_000_000, "{size}");
    let (peak_before, rss_before) = c.api.memory_kb();
    let id = c.upload_files(files).await;
    let (peak_after, _) = c.api.memory_kb();
    let grew_mb = peak_after.saturating_sub(peak_before.min(rss_before)) as f64 / 1024.0;
    eprintln!("peak RSS grew by {grew_mb:.1} MB for a {size}-byte upload");
    assert!(grew_mb < 64.0, "peak RSS grew by {grew_mb:.1} MB for a {size}-byte upload");
    let m: Value = c
        .client
        .get(format!("{}/v1/models/{id}", c.base))
        .bearer_auth(&c.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["bytes"], size);
}

/// Two worker processes on one PostgreSQL never run the same job at once: every job is
/// claimed exactly once, and both workers take part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_run_the_same_job_postgres() {
    let c = Cluster::start(Db::Postgres).await;
    let model = c.upload(&TinyModel::default()).await;
    let mut jobs = Vec::new();
    for i in 0..16 {
        jobs.push(c.submit(&model, 0.05 * (i % 10) as f64).await);
    }
    let a = c.worker(&["--job-step-delay-ms", "20"]);
    let b = c.worker(&["--job-step-delay-ms", "20"]);
    for id in &jobs {
        let done =
            c.wait_until(id, |j| j["status"] == "succeeded" || j["status"] == "failed", Duration::from_secs(60)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "{done}");
    }
    let claimed = |p: &Proc| -> Vec<String> {
        p.logs()
            .into_iter()
            .filter(|l| l["message"] == "job claimed")
            .map(|l| l["job_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (ca, cb) = (claimed(&a), claimed(&b));
    assert!(!ca.is_empty() && !cb.is_empty(), "both workers should have claimed jobs: {} / {}", ca.len(), cb.len());
    let mut all: Vec<String> = ca.into_iter().chain(cb).collect();
    all.sort();
    let mut want = jobs.clone();
    want.sort();
    assert_eq!(all, want, "every job claimed exactly once");
}
