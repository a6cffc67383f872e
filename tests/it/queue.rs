//! The queue's guarantees at the store level, on SQLite and on PostgreSQL: lease expiry and
//! re-claim, the attempt limit, lease-guarded state changes, and deletes refused while a job
//! reads a resource.

use crate::common;

use common::{problem, Db, TestApp, TestOptions};
use reqwest::StatusCode;
use secateur::engine::testing::TinyModel;
use secateur::store::{CreateOutcome, Heartbeat, JobRow, NewJob, Store};
use serde_json::Value;
use std::time::Duration;

async fn new_job(store: &Store, tenant: &str, model: &str, inputs: &[String], max_attempts: i64) -> JobRow {
    let spec = format!(
        r#"{{"kind":"prune","model_id":"{model}","pruning":{{"method":"magnitude","scope":"global","sparsity":0.5,"include":[],"exclude":[]}}}}"#
    );
    match store
        .create_job(NewJob {
            tenant_id: tenant,
            kind: "prune",
            model_id: model,
            spec: &spec,
            inputs,
            max_attempts,
            idempotency_key: None,
            request_hash: "h",
        })
        .await
        .unwrap()
    {
        CreateOutcome::Created(r) => r,
        other => panic!("{other:?}"),
    }
}

async fn tenant_of(app: &TestApp) -> String {
    app.store.find_principal(&secateur::api::auth::hash_key(&app.key)).await.unwrap().unwrap().tenant_id
}

async fn expired_leases_are_reclaimed_until_attempts_run_out(db: Db) {
    let app = TestApp::spawn_with(db, TestOptions { workers: 0, ..Default::default() }).await;
    let model = app.create_model(&TinyModel::default()).await;
    let tenant = tenant_of(&app).await;
    let s = &app.store;
    let job = new_job(s, &tenant, &model, std::slice::from_ref(&model), 2).await;
    // Worker A claims with a very short lease, then "dies".
    let a = s.claim_job("worker-a", 1).await.unwrap().expect("a claims");
    assert_eq!((a.id.as_str(), a.attempts, a.lease_owner.as_deref()), (job.id.as_str(), 1, Some("worker-a")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    // B takes it over; A's late heartbeat, progress and outcome are all refused.
    let b = s.claim_job("worker-b", 1).await.unwrap().expect("b re-claims the expired job");
    assert_eq!((b.id.as_str(), b.attempts), (job.id.as_str(), 2));
    assert_eq!(s.heartbeat(&job.id, "worker-a", 60_000).await.unwrap(), Heartbeat::Lost);
    assert!(!s.set_progress(&job.id, "worker-a", "pruning", 0.5).await.unwrap());
    assert!(!s.finish_succeeded(&job.id, "worker-a", &[]).await.unwrap());
    assert!(!s
        .finish_unsuccessful(&job.id, "worker-a", secateur::store::Unsuccessful::Failed, Some("late"))
        .await
        .unwrap());
    // B dies too: no attempts are left, so nobody may claim it and it ends failed with the reason.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s.claim_job("worker-c", 60_000).await.unwrap().is_none());
    let j: Value = app.get(&format!("/v1/jobs/{}", job.id)).send().await.unwrap().json().await.unwrap();
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["attempts"], 2);
    assert!(j["error"].as_str().unwrap().contains("stopped responding"), "{j}");
    // A failed job no longer holds its model.
    assert_eq!(app.delete(&format!("/v1/models/{model}")).send().await.unwrap().status(), StatusCode::NO_CONTENT);
}

async fn a_cancelled_job_cannot_be_overwritten_by_its_worker(db: Db) {
    let app = TestApp::spawn_with(db, TestOptions { workers: 0, ..Default::default() }).await;
    let model = app.create_model(&TinyModel::default()).await;
    let tenant = tenant_of(&app).await;
    let s = &app.store;
    let job = new_job(s, &tenant, &model, &[], 3).await;
    let claimed = s.claim_job("worker-a", 60_000).await.unwrap().unwrap();
    assert_eq!(claimed.id, job.id);
    // Cancel while running: requested, seen by the next heartbeat.
    let r = app.post(&format!("/v1/jobs/{}/cancel", job.id)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(s.heartbeat(&job.id, "worker-a", 60_000).await.unwrap(), Heartbeat::Renewed { cancel_requested: true });
    assert!(s.finish_unsuccessful(&job.id, "worker-a", secateur::store::Unsuccessful::Cancelled, None).await.unwrap());
    // The worker's (late) success cannot overwrite it.
    assert!(!s.finish_succeeded(&job.id, "worker-a", &[]).await.unwrap());
    let j: Value = app.get(&format!("/v1/jobs/{}", job.id)).send().await.unwrap().json().await.unwrap();
    assert_eq!(j["status"], "cancelled");
    // A running job whose worker dies after a cancel request ends cancelled, not re-run.
    let job2 = new_job(s, &tenant, &model, &[], 3).await;
    s.claim_job("worker-b", 1).await.unwrap().unwrap();
    app.post(&format!("/v1/jobs/{}/cancel", job2.id)).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s.claim_job("worker-c", 60_000).await.unwrap().is_none());
    let j: Value = app.get(&format!("/v1/jobs/{}", job2.id)).send().await.unwrap().json().await.unwrap();
    assert_eq!(j["status"], "cancelled", "{j}");
}

async fn graceful_release_puts_the_job_back_without_counting_the_attempt(db: Db) {
    let app = TestApp::spawn_with(db, TestOptions { workers: 0, ..Default::default() }).await;
    let model = app.create_model(&TinyModel::default()).await;
    let tenant = tenant_of(&app).await;
    let s = &app.store;
    let job = new_job(s, &tenant, &model, &[], 3).await;
    s.claim_job("worker-a", 60_000).await.unwrap().unwrap();
    assert!(!s.release_job(&job.id, "worker-b").await.unwrap(), "only the owner may release");
    assert!(s.release_job(&job.id, "worker-a").await.unwrap());
    let again = s.claim_job("worker-b", 60_000).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (job.id, 1));
}

async fn resources_read_by_active_jobs_cannot_be_deleted(db: Db) {
    let app = TestApp::spawn_with(db, TestOptions { workers: 0, ..Default::default() }).await;
    let model = app.create_model(&TinyModel::default()).await;
    let ds: Value = app.upload_dataset(b"{\"text\":\"a\"}\n".to_vec(), "jsonl", None).await.json().await.unwrap();
    let ds = ds["id"].as_str().unwrap().to_string();
    let tenant = tenant_of(&app).await;
    let job = new_job(&app.store, &tenant, &model, &[model.clone(), ds.clone()], 3).await;
    // Queued and running: refused.
    assert_eq!(problem(app.delete(&format!("/v1/datasets/{ds}")).send().await.unwrap()).await.0, StatusCode::CONFLICT);
    app.store.claim_job("worker-a", 60_000).await.unwrap().unwrap();
    assert_eq!(problem(app.delete(&format!("/v1/datasets/{ds}")).send().await.unwrap()).await.0, StatusCode::CONFLICT);
    assert_eq!(problem(app.delete(&format!("/v1/models/{model}")).send().await.unwrap()).await.0, StatusCode::CONFLICT);
    // Finished: allowed, and the data is still there until then.
    assert_eq!(app.get(&format!("/v1/datasets/{ds}")).send().await.unwrap().status(), StatusCode::OK);
    assert!(app.store.finish_succeeded(&job.id, "worker-a", &[]).await.unwrap());
    assert_eq!(app.delete(&format!("/v1/datasets/{ds}")).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(app.delete(&format!("/v1/models/{model}")).send().await.unwrap().status(), StatusCode::NO_CONTENT);
}

backend_tests!(
    expired_leases_are_reclaimed_until_attempts_run_out,
    a_cancelled_job_cannot_be_overwritten_by_its_worker,
    graceful_release_puts_the_job_back_without_counting_the_attempt,
    resources_read_by_active_jobs_cannot_be_deleted,
);
