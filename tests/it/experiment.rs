//! Experiment jobs through the HTTP API (a real server on port 0, SQLite and PostgreSQL): spec
//! validation with the field at fault, the stages and their metrics in the database
//! (`GET /v1/jobs/{id}/result`), and the artifacts (pruned task model, masks, report,
//! predictions that re-score to the reported metrics).

use crate::common;

use common::{problem, toy_sst2, Db, TestApp};
use reqwest::StatusCode;
use secateur::engine::io::st;
use secateur::engine::testing::TinyModel;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

async fn dataset(app: &TestApp, bytes: Vec<u8>, task: &str) -> String {
    let r = app.upload_dataset(bytes, "glue_tsv", Some(task)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

async fn experiments_validate_run_and_report(db: Db) {
    let app = TestApp::spawn(db).await;
    let model = app.create_model(&TinyModel::default()).await;
    let train = dataset(&app, toy_sst2(96, 0), "sst2").await;
    let dev = dataset(&app, toy_sst2(40, 3), "sst2").await;
    let rte = dataset(&app, b"index\tsentence1\tsentence2\tlabel\n0\tw5 w6\tw7\tentailment\n".to_vec(), "rte").await;

    // Faults, each named by its field.
    let base = json!({"kind": "experiment", "model_id": model, "task": {"name": "sst2", "dataset_id": train, "eval_dataset_id": dev}});
    let with = |patch: Value| {
        let mut v = base.clone();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let cases = [
        (with(json!({"task": {"name": "sst2", "dataset_id": train}})), "task.eval_dataset_id"),
        (
            with(json!({"task": {"name": "sst2", "dataset_id": train, "eval_dataset_id": dev, "eval_fraction": 0.1}})),
            "task.eval_fraction",
        ),
        (with(json!({"task": {"name": "sst2", "dataset_id": rte, "eval_dataset_id": dev}})), "task.dataset_id"),
        (with(json!({"task": {"name": "squad", "dataset_id": train, "eval_dataset_id": dev}})), "task.dataset_id"),
        (with(json!({"task": {"name": "sst3", "dataset_id": train, "eval_dataset_id": dev}})), "task.name"),
        (
            with(
                json!({"task": {"name": "sst2", "dataset_id": uuid::Uuid::new_v4().to_string(), "eval_dataset_id": dev}}),
            ),
            "task.dataset_id",
        ),
        (with(json!({"recovery": {"epochs": 1}})), "recovery"),
        (with(json!({"finetune": {"learning_rate": 0}})), "finetune.learning_rate"),
        (with(json!({"finetune": {"batch_size": 0}})), "finetune.batch_size"),
        (with(json!({"finetune": {"epochs": 1, "bogus": 1}})), "finetune.bogus"),
        (with(json!({"pruning": {"method": "wanda2", "sparsity": 0.5}})), "pruning.method"),
        (with(json!({"pruning": {"method": "magnitude", "sparsity": 1.5}})), "pruning.sparsity"),
        (with(json!({"pruning": {"method": "magnitude", "granularity": "n:m"}})), "pruning.pattern"),
        (with(json!({"pruning": {"method": "head_importance", "sparsity": 0.5}})), "pruning.granularity"),
        (
            with(json!({"pruning": {"method": "movement", "sparsity": 0.5, "schedule": {"kind": "cubic"}}})),
            "pruning.schedule.kind",
        ),
        (
            with(json!({"pruning": {"method": "magnitude", "sparsity": 0.5}, "recovery": {"distill": {"alpha": 2}}})),
            "recovery.distill.alpha",
        ),
        (with(json!({"pruning": {"method": "magnitude", "granularity": "n:m", "pattern": "3:5"}})), "pruning.pattern"),
    ];
    for (body, field) in cases {
        let (s, p) = problem(app.submit(&body).await).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
    }

    // Fine-tune, prune 50% of the encoder's linear weights, recover with distillation.
    let job = app
        .submit_ok(&with(json!({
            "finetune": {"epochs": 10, "learning_rate": 2e-3, "batch_size": 8, "max_seq_len": 32},
            "pruning": {"method": "magnitude", "sparsity": 0.5},
            "recovery": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 8, "max_seq_len": 32, "distill": {"temperature": 2.0, "alpha": 0.5}},
        })))
        .await;
    let done = app.wait_for(&job, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["eta_seconds"], Value::Null);
    let result: Value = app.get(&format!("/v1/jobs/{job}/result")).send().await.unwrap().json().await.unwrap();
    assert_eq!(result["complete"], true);
    let names: Vec<&str> = result["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["loading", "baseline_eval", "finetune", "dense_eval", "prune", "recover", "final_eval", "export"]
    );
    for k in ["baseline", "before", "pruned", "after"] {
        let a = result["metrics"][k]["accuracy"].as_f64().unwrap_or_else(|| panic!("{k}: {result}"));
        assert!((0.0..=1.0).contains(&a));
    }
    assert!(
        result["metrics"]["before"]["accuracy"].as_f64().unwrap() >= 0.75,
        "fine-tuning learns the toy task: {result}"
    );
    assert_eq!(result["stages"][2]["result"]["steps"], 10 * 12);
    assert!((result["summary"]["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{result}");
    assert!(result["summary"]["latency_ms"]["before"].as_f64().unwrap() > 0.0);

    // The pruned task model: half of every linear weight is zero, the rest of the encoder moved.
    let out = app.artifact(&job, "model.safetensors").await;
    let h = st::parse(&out).unwrap();
    let report: Value = serde_json::from_slice(&app.artifact(&job, "report.json").await).unwrap();
    assert!((report["totals"]["target_sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{report}");
    assert_eq!(report["method"], "magnitude");
    let masks = st::parse(&app.artifact(&job, "masks.safetensors").await).unwrap();
    assert_eq!(masks.tensors.len(), 12);
    assert!(h.tensors.contains_key("classifier.weight") && h.tensors.contains_key("bert.pooler.dense.weight"));
    let cfg: Value = serde_json::from_slice(&app.artifact(&job, "config.json").await).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    // Predictions re-score to the reported metric.
    let preds = String::from_utf8(app.artifact(&job, "predictions.jsonl").await).unwrap();
    let rows: Vec<Value> = preds.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 40);
    assert_eq!(rows[0]["id"], 2, "line numbers: the header is line 1");
    let correct = rows.iter().filter(|r| r["prediction"] == r["label"]).count();
    assert!((correct as f64 / 40.0 - result["metrics"]["after"]["accuracy"].as_f64().unwrap()).abs() < 1e-12);

    // Gradual movement pruning during recovery reaches its target; no fine-tuning stage.
    let job = app
        .submit_ok(&with(json!({
            "task": {"name": "sst2", "dataset_id": train, "eval_fraction": 0.25},
            "pruning": {"method": "movement", "sparsity": 0.7, "schedule": {"kind": "cubic", "every": 2}},
            "recovery": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 8, "max_seq_len": 32},
            "evaluation": {"latency": false},
        })))
        .await;
    let done = app.wait_for(&job, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let result: Value = app.get(&format!("/v1/jobs/{job}/result")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = result["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["loading", "baseline_eval", "prune", "recover", "final_eval", "export"]);
    assert_eq!(result["stages"][0]["result"]["eval_examples"], 24);
    assert!((result["summary"]["sparsity"].as_f64().unwrap() - 0.7).abs() < 1e-3, "{result}");
    assert_eq!(result["summary"]["latency_ms"]["before"], Value::Null);
    assert_eq!(result["metrics"]["pruned"], Value::Null, "gradual: no one-shot evaluation");

    // Head importance prunes whole heads.
    let job = app
        .submit_ok(&with(json!({
            "pruning": {"method": "head_importance", "granularity": "heads", "sparsity": 0.5},
            "recovery": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_seq_len": 32},
        })))
        .await;
    let done = app.wait_for(&job, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let result: Value = app.get(&format!("/v1/jobs/{job}/result")).send().await.unwrap().json().await.unwrap();
    let scores = &result["stages"][2]["result"]["head_scores"];
    assert_eq!(scores.as_array().unwrap().len(), 2, "{result}");
    let out = app.artifact(&job, "model.safetensors").await;
    let h = st::parse(&out).unwrap();
    let t = &h.tensors["bert.encoder.layer.0.attention.self.query.weight"];
    let q = st::floats(&out[(h.data_start + t.begin) as usize..(h.data_start + t.end) as usize], t.dtype).unwrap();
    let zero_heads = q.chunks(8 * 32).filter(|head| head.iter().all(|v| *v == 0.0)).count();
    let t1 = &h.tensors["bert.encoder.layer.1.attention.self.query.weight"];
    let q1 = st::floats(&out[(h.data_start + t1.begin) as usize..(h.data_start + t1.end) as usize], t1.dtype).unwrap();
    let zero_heads1 = q1.chunks(8 * 32).filter(|head| head.iter().all(|v| *v == 0.0)).count();
    assert_eq!(zero_heads + zero_heads1, 4, "half of the 8 heads are gone");

    // A prune job records one stage, its report's summary; it has no task metrics.
    let p = app.submit_ok(&json!({"model_id": model, "pruning": {"method": "magnitude", "sparsity": 0.5}})).await;
    app.wait_for(&p, &["succeeded"], WAIT).await;
    let r: Value = app.get(&format!("/v1/jobs/{p}/result")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        r["stages"].as_array().unwrap().iter().map(|s| s["name"].clone()).collect::<Vec<_>>(),
        vec![json!("export")]
    );
    assert_eq!(r["summary"]["totals"]["target_sparsity"], 0.5);
    assert_eq!(r["metrics"], json!({"baseline": null, "before": null, "pruned": null, "after": null}));
    let missing = app.get(&format!("/v1/jobs/{}/result", uuid::Uuid::new_v4())).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

/// A worker that stops (shutdown: the job is released) in the middle of recovery; another
/// worker claims the job again and resumes from the last checkpoint, ending with the same
/// model, bit for bit, as an uninterrupted run.
async fn a_reclaimed_experiment_resumes_from_its_checkpoint(db: Db) {
    // Movement (scores, their Adam moments and the weights behind regrowing masks are in the
    // checkpoint), then whole layers (the checkpoint holds the smaller model; the teacher has
    // every layer).
    resumes(db, json!({"method": "movement", "sparsity": 0.6, "schedule": {"kind": "cubic", "every": 3}})).await;
    resumes(db, json!({"method": "magnitude", "granularity": "layers", "sparsity": 0.5})).await;
}

async fn resumes(db: Db, pruning: Value) {
    use secateur::artifacts::Artifacts;
    use secateur::queue::Worker;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;
    let app = TestApp::spawn_with(db, common::TestOptions { workers: 0, ..Default::default() }).await;
    let model = app.create_model(&TinyModel::default()).await;
    let train = dataset(&app, toy_sst2(48, 0), "sst2").await;
    let dev = dataset(&app, toy_sst2(16, 3), "sst2").await;
    let spec = json!({"kind": "experiment", "model_id": model, "task": {"name": "sst2", "dataset_id": train, "eval_dataset_id": dev},
        "finetune": {"epochs": 2, "learning_rate": 2e-3, "batch_size": 8, "max_seq_len": 32},
        "pruning": pruning,
        "recovery": {"epochs": 12, "learning_rate": 1e-3, "batch_size": 8, "max_seq_len": 32, "distill": {"temperature": 2.0, "alpha": 0.5}},
        "evaluation": {"latency": false}});
    let worker = |delay: u64| {
        let artifacts = Artifacts::local(&app.dir.path().join("artifacts")).unwrap();
        Arc::new(Worker {
            store: app.store.clone(),
            artifacts,
            args: common::worker_args(1, delay),
            owner: format!("w-{}", uuid::Uuid::new_v4()),
        })
    };
    // Interrupted: a slow worker shut down once recovery is under way.
    let interrupted = app.submit_ok(&spec).await;
    let stop_a = CancellationToken::new();
    let a = tokio::spawn(worker(60).run(stop_a.clone()));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let j = app.job(&interrupted).await;
        if j["stage"] == "recover" && j["progress"].as_f64().unwrap() > 0.55 {
            break;
        }
        assert!(std::time::Instant::now() < deadline && j["status"] != "succeeded", "never interrupted: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_a.cancel();
    a.await.unwrap();
    let j = app.job(&interrupted).await;
    assert_eq!(j["status"], "queued", "released for another worker: {j}");
    // Another worker goes on from the checkpoint, then runs the same spec uninterrupted.
    let stop_b = CancellationToken::new();
    let b = tokio::spawn(worker(0).run(stop_b.clone()));
    let done = app.wait_for(&interrupted, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let straight = app.submit_ok(&spec).await;
    let done = app.wait_for(&straight, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    stop_b.cancel();
    b.await.unwrap();
    let result: Value = app.get(&format!("/v1/jobs/{interrupted}/result")).send().await.unwrap().json().await.unwrap();
    let recover = result["stages"].as_array().unwrap().iter().find(|s| s["name"] == "recover").unwrap();
    assert_eq!(recover["result"]["resumed"], true, "{result}");
    let names: Vec<&str> = result["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["loading", "baseline_eval", "finetune", "dense_eval", "prune", "recover", "final_eval", "export"]
    );
    let other: Value = app.get(&format!("/v1/jobs/{straight}/result")).send().await.unwrap().json().await.unwrap();
    assert_eq!(result["metrics"], other["metrics"]);
    assert_eq!(
        app.artifact(&interrupted, "model.safetensors").await,
        app.artifact(&straight, "model.safetensors").await,
        "resumed == uninterrupted"
    );
    // The checkpoint is gone once the job has succeeded, and never listed as an artifact.
    let listed: Value =
        app.get(&format!("/v1/jobs/{interrupted}/artifacts")).send().await.unwrap().json().await.unwrap();
    assert!(listed.as_array().unwrap().iter().all(|a| !a["name"].as_str().unwrap().contains("scratch")), "{listed}");
    assert!(app.stored_files().iter().all(|f| !f.contains("_scratch")), "{:?}", app.stored_files());
}

/// A SQuAD v1.1 file over the tiny vocabulary: the answer is the word after `w9`.
fn toy_squad(articles: usize, seed: usize) -> Vec<u8> {
    let data: Vec<Value> = (0..articles)
        .map(|a| {
            let qas: Vec<Value> = (0..4)
                .map(|q| {
                    let n = a * 4 + q + seed;
                    let mut words: Vec<String> = (0..18).map(|j| format!("w{}", 10 + (n * 7 + j * 3) % 50)).collect();
                    let at = 2 + n % 12;
                    words[at] = "w9".into();
                    let context = words.join(" ");
                    let start = words[..=at].iter().map(|w| w.len() + 1).sum::<usize>();
                    json!({"context": context, "qas": [{"id": format!("q{a}-{q}"), "question": format!("w5 w{}", 6 + q), "answers": [{"answer_start": start, "text": words[at + 1]}]}]})
                })
                .collect();
            json!({"title": format!("article {a}"), "paragraphs": qas})
        })
        .collect();
    serde_json::to_vec(&json!({"version": "1.1", "data": data})).unwrap()
}

async fn squad_experiments_score_exact_match_and_f1(db: Db) {
    let app = TestApp::spawn(db).await;
    let model = app.create_model(&TinyModel::default()).await;
    let r = app.upload_dataset(toy_squad(8, 0), "squad_json", Some("squad")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let squad = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let sst2 = dataset(&app, toy_sst2(8, 0), "sst2").await;
    let (s, p) = problem(app.submit(&json!({"kind": "experiment", "model_id": model, "task": {"name": "squad", "dataset_id": sst2, "eval_fraction": 0.25}})).await).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["errors"][0]["field"], "task.dataset_id", "{p}");
    let job = app
        .submit_ok(&json!({"kind": "experiment", "model_id": model, "task": {"name": "squad", "dataset_id": squad, "eval_fraction": 0.25},
            "finetune": {"epochs": 3, "learning_rate": 2e-3, "batch_size": 8, "max_seq_len": 32},
            "pruning": {"method": "taylor", "sparsity": 0.5},
            "recovery": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_seq_len": 32, "distill": {"temperature": 2.0, "alpha": 0.5}},
            "evaluation": {"latency": false}}))
        .await;
    let done = app.wait_for(&job, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let result: Value = app.get(&format!("/v1/jobs/{job}/result")).send().await.unwrap().json().await.unwrap();
    assert_eq!(result["stages"][0]["result"]["eval_examples"], 8, "two whole articles held out: {result}");
    for k in ["before", "pruned", "after"] {
        for m in ["exact_match", "f1"] {
            let v = result["metrics"][k][m].as_f64().unwrap_or_else(|| panic!("{k} {m}: {result}"));
            assert!((0.0..=100.0).contains(&v));
        }
    }
    let cfg: Value = serde_json::from_slice(&app.artifact(&job, "config.json").await).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForQuestionAnswering");
    let preds = String::from_utf8(app.artifact(&job, "predictions.jsonl").await).unwrap();
    let rows: Vec<Value> = preds.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 8);
    assert!(rows
        .iter()
        .all(|r| r["id"].as_str().unwrap().starts_with("q6-") || r["id"].as_str().unwrap().starts_with("q7-")));
    let exact = rows.iter().filter(|r| r["label"].as_array().unwrap().iter().any(|g| g == &r["prediction"])).count();
    assert!(
        (100.0 * exact as f64 / 8.0 - result["metrics"]["after"]["exact_match"].as_f64().unwrap()).abs() < 1e-9,
        "{result}"
    );
}

/// The floats of one tensor of a safetensors file.
fn tensor(bytes: &[u8], name: &str) -> (Vec<f32>, Vec<u64>) {
    let h = st::parse(bytes).unwrap();
    let t = &h.tensors[name];
    (
        st::floats(&bytes[(h.data_start + t.begin) as usize..(h.data_start + t.end) as usize], t.dtype).unwrap(),
        t.shape.clone(),
    )
}

/// Wanda/SparseGPT starting points (calibrated on the training data) and structured heads +
/// neurons, with latency measured on the physically smaller model.
async fn calibrated_and_structured_experiments(db: Db) {
    let app = TestApp::spawn(db).await;
    let model = app.create_model(&TinyModel::default()).await;
    let train = dataset(&app, toy_sst2(64, 0), "sst2").await;
    let dev = dataset(&app, toy_sst2(24, 3), "sst2").await;
    let base = json!({"kind": "experiment", "model_id": model, "task": {"name": "sst2", "dataset_id": train, "eval_dataset_id": dev},
        "recovery": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_seq_len": 32}});
    let with = |pruning: Value| {
        let mut v = base.clone();
        v["pruning"] = pruning;
        v
    };
    let cases = [
        (with(json!({"method": "wanda", "scope": "global", "sparsity": 0.5})), "pruning.scope"),
        (with(json!({"method": "sparsegpt", "sparsity": 0.5, "schedule": {"kind": "cubic"}})), "pruning.schedule.kind"),
        (
            with(json!({"method": "sparsegpt", "sparsity": 0.5, "calibration_samples": 0})),
            "pruning.calibration_samples",
        ),
        (
            with(json!({"method": "magnitude", "sparsity": 0.5, "calibration_samples": 16})),
            "pruning.calibration_samples",
        ),
        (with(json!({"method": "wanda", "granularity": "heads", "sparsity": 0.5})), "pruning.granularity"),
        (with(json!({"method": "taylor", "granularity": "neurons", "sparsity": 0.5})), "pruning.granularity"),
        (with(json!({"method": "magnitude", "sparsity": 0.5, "neuron_sparsity": 0.5})), "pruning.neuron_sparsity"),
        (
            with(json!({"method": "magnitude", "granularity": "heads", "sparsity": 0.5, "neuron_sparsity": 1.0})),
            "pruning.neuron_sparsity",
        ),
        (with(json!({"method": "taylor", "granularity": "layers", "sparsity": 0.5})), "pruning.granularity"),
        (
            with(json!({"method": "magnitude", "granularity": "layers", "scope": "local", "sparsity": 0.5})),
            "pruning.scope",
        ),
    ];
    for (body, field) in cases {
        let (s, p) = problem(app.submit(&body).await).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
    }

    // SparseGPT 2:4 from 16 calibration examples; recovery keeps the pattern.
    let job = app
        .submit_ok(&with(
            json!({"method": "sparsegpt", "granularity": "n:m", "pattern": "2:4", "calibration_samples": 16}),
        ))
        .await;
    let done = app.wait_for(&job, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let result: Value = app.get(&format!("/v1/jobs/{job}/result")).send().await.unwrap().json().await.unwrap();
    assert!((result["summary"]["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{result}");
    assert!(result["metrics"]["pruned"]["accuracy"].is_f64(), "{result}");
    let report: Value = serde_json::from_slice(&app.artifact(&job, "report.json").await).unwrap();
    assert_eq!((report["method"].as_str(), report["scope"].as_str()), (Some("sparsegpt"), Some("local")), "{report}");
    let out = app.artifact(&job, "model.safetensors").await;
    for l in 0..2 {
        for m in ["attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense"] {
            let (w, _) = tensor(&out, &format!("bert.encoder.layer.{l}.{m}.weight"));
            assert!(w.chunks(4).all(|g| g.iter().filter(|v| **v != 0.0).count() == 2), "layer {l} {m}");
        }
    }

    // Half of the heads and half of the FFN neurons in every layer.
    let mut body = with(
        json!({"method": "magnitude", "granularity": "heads", "scope": "local", "sparsity": 0.5, "neuron_sparsity": 0.5}),
    );
    body["export"] = json!({"compact": true});
    let job = app.submit_ok(&body).await;
    let done = app.wait_for(&job, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let result: Value = app.get(&format!("/v1/jobs/{job}/result")).send().await.unwrap().json().await.unwrap();
    let summary = &result["summary"];
    assert_eq!(
        summary["units"],
        json!({"heads_removed": 4, "heads": 8, "neurons_removed": 64, "neurons": 128, "layers_removed": [], "layers": 2}),
        "{summary}"
    );
    assert!(
        summary["latency_ms"]["after"].as_f64().unwrap() > 0.0
            && summary["latency_ms"]["speedup"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    assert!(summary["latency_ms"]["note"].as_str().unwrap().contains("physically"), "{summary}");
    let out = app.artifact(&job, "model.safetensors").await;
    for l in 0..2 {
        let (w, shape) = tensor(&out, &format!("bert.encoder.layer.{l}.output.dense.weight"));
        let cols = shape[1] as usize;
        let zero_cols = (0..cols).filter(|c| w.chunks(cols).all(|row| row[*c] == 0.0)).count();
        assert_eq!(zero_cols, 32, "layer {l}: half of the 64 neurons stay removed after recovery");
    }
    // The compact layout: the units physically gone, the same outputs as the zero-filled files
    // (a folder artifact is addressed with its slash percent-encoded).
    let compact = app.artifact(&job, "compact%2Fmodel.safetensors").await;
    assert_eq!(tensor(&compact, "bert.encoder.layer.0.attention.self.query.weight").1, vec![16, 32]);
    assert_eq!(tensor(&compact, "bert.encoder.layer.1.intermediate.dense.weight").1, vec![32, 32]);
    assert_eq!(tensor(&compact, "classifier.weight").1, vec![2, 32]);
    let c_cfg = app.artifact(&job, "compact%2Fconfig.json").await;
    let hf_cfg = app.artifact(&job, "config.json").await;
    let report: Value = serde_json::from_slice(&app.artifact(&job, "report.json").await).unwrap();
    assert!(
        report["compact"]["parameters"].as_u64().unwrap() < report["totals"]["parameters"].as_u64().unwrap(),
        "{report}"
    );
    let dev = candle_core::Device::Cpu;
    let ids =
        candle_core::Tensor::from_vec((0..16u32).map(|i| 5 + i * 3 % 50).collect::<Vec<_>>(), (2, 8), &dev).unwrap();
    let mask =
        candle_core::Tensor::from_vec([vec![1u32; 8], vec![1, 1, 1, 1, 1, 0, 0, 0]].concat(), (2, 8), &dev).unwrap();
    let run = |cfg: &[u8], st: &[u8]| {
        secateur::engine::model::Encoder::from_files(cfg, st, &dev)
            .unwrap()
            .forward(&ids, None, &mask)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (run(&hf_cfg, &out), run(&c_cfg, &compact));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5), "compact = zero-filled");

    // Whole layers: the weaker of the two is gone from the trained and exported model.
    let job = app.submit_ok(&with(json!({"method": "magnitude", "granularity": "layers", "sparsity": 0.5}))).await;
    let done = app.wait_for(&job, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let result: Value = app.get(&format!("/v1/jobs/{job}/result")).send().await.unwrap().json().await.unwrap();
    let summary = &result["summary"];
    assert_eq!(summary["units"]["layers"], 2, "{summary}");
    assert_eq!(summary["units"]["layers_removed"].as_array().map(Vec::len), Some(1), "{summary}");
    assert!(summary["latency_ms"]["speedup"].as_f64().unwrap() > 0.0, "{summary}");
    let prune = result["stages"].as_array().unwrap().iter().find(|s| s["name"] == "prune").unwrap();
    assert_eq!(prune["result"]["layers_removed"], summary["units"]["layers_removed"], "{result}");
    let cfg: Value = serde_json::from_slice(&app.artifact(&job, "config.json").await).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 1, "{cfg}");
    let out = app.artifact(&job, "model.safetensors").await;
    assert_eq!(tensor(&out, "bert.encoder.layer.0.output.dense.weight").1, vec![32, 64]);
    let h = secateur::engine::io::st::parse(&out).unwrap();
    assert!(h.tensors.keys().all(|k| !k.contains("layer.1.")), "{:?}", h.tensors.keys().collect::<Vec<_>>());
    // The exported task model loads in our runtime.
    secateur::engine::model::Encoder::from_files(&serde_json::to_vec(&cfg).unwrap(), &out, &dev).unwrap();
    // Removing every layer fails the job, naming the field.
    let job = app.submit_ok(&with(json!({"method": "magnitude", "granularity": "layers", "sparsity": 0.9}))).await;
    let done = app.wait_for(&job, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["error"].as_str().unwrap_or_default().contains("pruning.sparsity"), "{done}");
}

/// A `causal_lm` experiment on a decoder: perplexity on the evaluation text before and after
/// one-shot SparseGPT, equal to our decoder's own score of the same windows (before: the model
/// as uploaded; after: the exported pruned model), recomputable from `predictions.jsonl`; and
/// what the spec refuses for this task.
async fn causal_lm_experiments_report_perplexity(db: Db) {
    use secateur::engine::model::decoder::Decoder;
    use secateur::engine::model::ModelError;
    use secateur::engine::testing::TinyDecoder;
    use secateur::train::lm::{eval_windows, window_nlls};
    let app = TestApp::spawn(db).await;
    let tokenizer = TinyModel::default().tokenizer_json();
    let m = TinyDecoder { model_type: "llama", ..Default::default() };
    let files = vec![
        ("config.json", m.config_json().into_bytes()),
        ("model.safetensors", m.safetensors()),
        ("tokenizer.json", tokenizer.clone().into_bytes()),
    ];
    let r = app.upload_model(files).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let model = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let text = |seed: usize| {
        (0..200).map(|i| format!("w{}", 5 + (i * 7 + seed + i / 13) % 59)).collect::<Vec<_>>().join(" ") + "\n"
    };
    let upload = |bytes: String| {
        let app = &app;
        async move {
            let r = app.upload_dataset(bytes.into_bytes(), "text", None).await;
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
        }
    };
    let (train, eval_text) = (upload(text(0)).await, text(3));
    let eval = upload(eval_text.clone()).await;
    let spec = |extra: Value| {
        let mut s = json!({"kind": "experiment", "model_id": model,
            "task": {"name": "causal_lm", "dataset_id": train, "eval_dataset_id": eval},
            "evaluation": {"max_seq_len": 16, "max_eval_samples": 5}});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    let job = app
        .submit_ok(&spec(json!({"pruning": {"method": "sparsegpt", "sparsity": 0.5, "calibration_samples": 6}})))
        .await;
    let done = app.wait_for(&job, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let result: Value = app.get(&format!("/v1/jobs/{job}/result")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = result["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["loading", "baseline_eval", "prune", "final_eval", "export"], "{result}");
    assert_eq!(result["stages"][0]["result"]["eval_windows"], 5, "{result}");
    let (before, after) = (&result["metrics"]["before"], &result["metrics"]["after"]);
    assert_eq!(result["metrics"]["pruned"], *after, "{result}");
    // Our decoder's own score of the same windows: the model as uploaded, and as exported.
    let tok = tokenizers::Tokenizer::from_bytes(tokenizer.as_bytes()).unwrap();
    let ids = tok.encode(eval_text.as_str(), false).unwrap().get_ids().to_vec();
    let windows = eval_windows(&ids, 16, Some(5));
    let perplexity = |d: &Decoder| {
        let nll: f64 = window_nlls::<ModelError>(d, &windows, &mut |_| Ok(())).unwrap().iter().sum();
        (nll / (5.0 * 15.0)).exp()
    };
    let dense = Decoder::from_files(m.config_json().as_bytes(), &m.safetensors()).unwrap();
    let pruned =
        Decoder::from_files(&app.artifact(&job, "config.json").await, &app.artifact(&job, "model.safetensors").await)
            .unwrap();
    let close = |a: f64, b: &Value| (a - b.as_f64().unwrap()).abs() <= 1e-9 * a;
    assert!(close(perplexity(&dense), &before["perplexity"]), "{} vs {before}", perplexity(&dense));
    assert!(close(perplexity(&pruned), &after["perplexity"]), "{} vs {after}", perplexity(&pruned));
    assert_ne!(before["perplexity"], after["perplexity"]);
    // predictions.jsonl: each window's NLL, from which the reported perplexity follows.
    let lines = String::from_utf8(app.artifact(&job, "predictions.jsonl").await.to_vec()).unwrap();
    let nlls: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(nlls.len(), 5);
    let total: f64 = nlls.iter().map(|l| l["nll"].as_f64().unwrap()).sum();
    let predicted: u64 = nlls.iter().map(|l| l["predicted"].as_u64().unwrap()).sum();
    assert_eq!(predicted, 5 * 15);
    assert!(close((total / predicted as f64).exp(), &after["perplexity"]), "{lines}");
    let report: Value = serde_json::from_slice(&app.artifact(&job, "report.json").await).unwrap();
    assert_eq!(
        (report["method"].as_str(), report["totals"]["target_sparsity"].as_f64()),
        (Some("sparsegpt"), Some(0.5))
    );
    assert_eq!(report["parameters"]["calibration_sequences"], 6, "{report}");
    app.artifact(&job, "masks.safetensors").await;
    app.artifact(&job, "tokenizer.json").await;
    // Without pruning: the baseline alone, and the model as uploaded.
    let job = app.submit_ok(&spec(json!({}))).await;
    assert_eq!(app.wait_for(&job, &["succeeded", "failed"], WAIT).await["status"], "succeeded");
    let r: Value = app.get(&format!("/v1/jobs/{job}/result")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["metrics"]["after"], *before, "{r}");
    // Refused, each naming its field.
    let sst2 = dataset(&app, toy_sst2(8, 0), "sst2").await;
    let encoder = app.create_model(&TinyModel::default()).await;
    let cases = [
        (spec(json!({"finetune": {"epochs": 1}})), "finetune"),
        (spec(json!({"pruning": {"method": "taylor", "sparsity": 0.5}})), "pruning.method"),
        (
            spec(json!({"pruning": {"method": "magnitude", "granularity": "heads", "sparsity": 0.5}})),
            "pruning.granularity",
        ),
        (spec(json!({"evaluation": {"max_seq_len": 1}})), "evaluation.max_seq_len"),
        (spec(json!({"task": {"name": "causal_lm", "dataset_id": train, "eval_fraction": 0.2}})), "task.eval_fraction"),
        (spec(json!({"task": {"name": "causal_lm", "dataset_id": sst2, "eval_dataset_id": eval}})), "task.dataset_id"),
        (spec(json!({"model_id": encoder})), "model_id"),
        (
            spec(json!({"task": {"name": "sst2", "dataset_id": sst2, "eval_dataset_id": sst2}, "evaluation": {}})),
            "model_id",
        ),
        (
            spec(json!({"task": {"name": "sst2", "dataset_id": sst2, "eval_dataset_id": sst2}})),
            "evaluation.max_seq_len",
        ),
    ];
    for (body, field) in cases {
        let (s, p) = problem(app.submit(&body).await).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
    }
    // The local command runs the same spec on files and writes the same files.
    let job = app.submit_ok(&spec(json!({"pruning": {"method": "magnitude", "sparsity": 0.5}}))).await;
    assert_eq!(app.wait_for(&job, &["succeeded", "failed"], WAIT).await["status"], "succeeded");
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("config.json"), m.config_json()).unwrap();
    std::fs::write(model_dir.join("model.safetensors"), m.safetensors()).unwrap();
    std::fs::write(model_dir.join("tokenizer.json"), &tokenizer).unwrap();
    std::fs::write(dir.path().join("train.txt"), text(0)).unwrap();
    std::fs::write(dir.path().join("eval.txt"), &eval_text).unwrap();
    let local = json!({"task": {"name": "causal_lm"}, "pruning": {"method": "magnitude", "sparsity": 0.5},
        "evaluation": {"max_seq_len": 16, "max_eval_samples": 5}});
    std::fs::write(dir.path().join("spec.json"), local.to_string()).unwrap();
    let out = dir.path().join("out");
    let r = local_experiment(
        &model_dir,
        &dir.path().join("spec.json"),
        [dir.path().join("train.txt"), dir.path().join("eval.txt")],
        &out,
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for name in ["model.safetensors", "predictions.jsonl", "report.json"] {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), app.artifact(&job, name).await, "{name}");
    }
    // causal_lm is not a dataset task.
    let r = app.upload_dataset(text(1).into_bytes(), "text", Some("causal_lm")).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

backend_tests!(
    experiments_validate_run_and_report,
    causal_lm_experiments_report_perplexity,
    a_reclaimed_experiment_resumes_from_its_checkpoint,
    squad_experiments_score_exact_match_and_f1,
    calibrated_and_structured_experiments
);

/// `secateur experiment --model DIR --spec SPEC --train TRAIN --eval EVAL --out OUT`.
fn local_experiment(
    model: &std::path::Path,
    spec: &std::path::Path,
    [train, eval]: [std::path::PathBuf; 2],
    out: &std::path::Path,
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(["experiment", "--model"])
        .arg(model)
        .arg("--spec")
        .arg(spec)
        .arg("--train")
        .arg(train)
        .arg("--eval")
        .arg(eval)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// `secateur experiment` runs the worker's code on local files: the same spec gives the same
/// files as the job; faults are reported with the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_command_writes_what_the_job_writes() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let m = TinyModel::default();
    let model = app.create_model(&m).await;
    let (train_tsv, dev_tsv) = (toy_sst2(48, 0), toy_sst2(16, 3));
    let train = dataset(&app, train_tsv.clone(), "sst2").await;
    let dev = dataset(&app, dev_tsv.clone(), "sst2").await;
    let body = json!({"finetune": {"epochs": 2, "learning_rate": 2e-3, "batch_size": 8, "max_seq_len": 32},
        "pruning": {"method": "magnitude", "granularity": "n:m", "pattern": "2:4"},
        "recovery": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_seq_len": 32}, "evaluation": {"latency": false}});
    let mut spec = body.clone();
    spec["kind"] = "experiment".into();
    spec["model_id"] = model.clone().into();
    spec["task"] = json!({"name": "sst2", "dataset_id": train, "eval_dataset_id": dev});
    let job = app.submit_ok(&spec).await;
    let done = app.wait_for(&job, &["succeeded", "failed"], WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    for (name, bytes) in common::model_files(&m) {
        std::fs::write(model_dir.join(name), bytes).unwrap();
    }
    std::fs::write(dir.path().join("train.tsv"), &train_tsv).unwrap();
    std::fs::write(dir.path().join("dev.tsv"), &dev_tsv).unwrap();
    let mut local = body.clone();
    local["task"] = json!({"name": "sst2"});
    std::fs::write(dir.path().join("spec.json"), local.to_string()).unwrap();
    let out = dir.path().join("out");
    let run = |spec: &str| {
        let data = [dir.path().join("train.tsv"), dir.path().join("dev.tsv")];
        local_experiment(&model_dir, &dir.path().join(spec), data, &out)
    };
    let r = run("spec.json");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("metrics before"));
    for name in ["model.safetensors", "masks.safetensors", "predictions.jsonl", "report.json"] {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), app.artifact(&job, name).await, "{name}");
    }
    let h = st::parse(&std::fs::read(out.join("model.safetensors")).unwrap()).unwrap();
    assert!(h.tensors.contains_key("classifier.weight"));
    assert!(
        !std::fs::read_dir(&out).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".secateur")),
        "no scratch left"
    );
    let mut bad = local.clone();
    bad["recovery"]["learning_rate"] = json!(-1);
    std::fs::write(dir.path().join("bad.json"), bad.to_string()).unwrap();
    let r = run("bad.json");
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("recovery.learning_rate"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}
