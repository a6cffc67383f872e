//! The committed OpenAPI description must be what the code generates.

#[test]
fn committed_spec_matches_the_code() {
    let generated = secateur::api::openapi().to_pretty_json().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json is stale: regenerate it with `cargo run -- openapi > openapi/openapi.json`"
    );
}

#[test]
fn cli_prints_the_same_spec() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_secateur")).arg("openapi").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.trim_end(), secateur::api::openapi().to_pretty_json().unwrap().trim_end());
}

#[test]
fn every_route_is_described_with_its_errors() {
    let spec: serde_json::Value = serde_json::from_str(&secateur::api::openapi().to_pretty_json().unwrap()).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    for p in [
        "/v1/models",
        "/v1/models/{id}",
        "/v1/models/{id}/files/{name}",
        "/v1/datasets",
        "/v1/datasets/{id}",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/artifacts",
        "/v1/jobs/{id}/artifacts/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the spec");
    }
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
    assert!(spec["components"]["schemas"]["JobRequest"].is_object());
    assert!(spec["components"]["schemas"]["Problem"].is_object());
}
