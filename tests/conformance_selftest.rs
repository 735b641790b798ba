//! Proves that the conformance helpers accept spec-conforming bodies and, more importantly,
//! reject non-conforming ones.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

#[path = "support/conformance.rs"]
mod conformance;

use conformance::*;
use serde_json::{json, Value};

/// The illustrative standalone virtual SIM from soracom-api.md section 3.
fn sample_sim() -> Value {
    json!({
        "simId": "8900001234567890123",
        "operatorId": "OP0012345678",
        "type": "virtual",
        "moduleType": "virtual",
        "status": "active",
        "speedClass": "arc.standard",
        "activeProfileId": "8900001234567890123",
        "groupId": "12345678-abcd-9012-efab-345678901234",
        "tags": {"name": ""},
        "capabilities": {"data": true, "sms": false},
        "terminationEnabled": false,
        "createdTime": 1700000000000u64,
        "lastModifiedTime": 1700000000000u64,
        "profiles": {
            "8900001234567890123": {
                "iccid": "8900001234567890123",
                "primaryImsi": "999990000000001",
                "otaSupported": false,
                "arcClientPeerPrivateKey": "<base64 32-byte key, only in the create/renew response>",
                "arcClientPeerPublicKey": "<base64 32-byte key>",
                "subscribers": {
                    "999990000000001": {"imsi": "999990000000001", "subscription": "planArc01",
                                        "status": "active", "capabilities": {"data": true, "sms": false}}
                }
            }
        },
        "arcSessionStatus": {
            "arcServerEndpoint": "rp.example.net:11010",
            "arcServerPeerPublicKey": "<base64>",
            "arcClientPeerPublicKey": "<base64>",
            "arcClientPeerIpAddress": "10.227.47.214",
            "arcAllowedIPs": ["100.127.0.0/16"],
            "lastUpdatedAt": 1700000000000u64,
            "placement": {"infrastructureProvider": "aws", "region": "ap-northeast-1"}
        },
        "sessionStatus": {"online": false}
    })
}

fn with(mut v: Value, pointer: &str, new: Value) -> Value {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("test setup: no {pointer}")) = new;
    v
}

#[track_caller]
fn expect_err(r: Result<(), String>, needles: &[&str]) -> String {
    let e = match r {
        Ok(()) => panic!("expected a conformance failure, got Ok"),
        Err(e) => e,
    };
    for n in needles {
        assert!(e.contains(n), "error message should mention {n:?}:\n{e}");
    }
    e
}

#[test]
fn spec_loads_from_the_in_repo_fixture() {
    let src = spec_source().expect("spec loads");
    assert!(
        src.ends_with("tests/fixtures/soracom-api-arc-subset.yaml"),
        "should prefer the in-repo copy, loaded {}",
        src.display()
    );
    let names = schema_names().unwrap();
    assert_eq!(names.len(), 63, "the subset has 63 schemas");
}

/// SHA-256 of the official subset (info.version 20260604-092803) the fixture must stay equal to.
/// When SORACOM publishes a new subset, copy it verbatim over the fixture, update this pin in the
/// same commit and regenerate openapi.yaml (scripts/gen-openapi.py).
const SUBSET_SHA256: &str = "539e93869873588e05b714797baa50b2f36234382e1846b7a2fd161795f81894";

#[test]
fn fixture_is_the_pinned_official_subset() {
    use sha2::Digest;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = std::fs::read(root.join(SPEC_FIXTURE_PATH)).expect("fixture present");
    assert_eq!(hex::encode(sha2::Sha256::digest(&fixture)), SUBSET_SHA256);
}

#[test]
fn every_schema_compiles_in_both_modes() {
    for name in schema_names().unwrap() {
        // `null` fails most schemas; we only care that compilation / ref resolution succeeds.
        for r in [
            validate_schema(&name, &json!({})),
            validate_schema_strict(&name, &json!({})),
        ] {
            if let Err(e) = r {
                assert!(
                    !e.contains("cannot compile") && !e.contains("Unresolvable"),
                    "{name}: {e}"
                );
            }
        }
    }
}

#[test]
fn valid_sim_passes_lenient_and_strict() {
    let sim = sample_sim();
    validate_schema("Sim", &sim).unwrap();
    validate_schema_strict("Sim", &sim).unwrap();
    assert_conforms("Sim", &sim);
    assert_conforms_strict("Sim", &sim);
    // Empty object: Sim has no required properties.
    validate_schema("Sim", &json!({})).unwrap();
}

#[test]
fn sim_with_string_created_time_fails() {
    let sim = with(sample_sim(), "/createdTime", json!("1"));
    let e = expect_err(validate_schema("Sim", &sim), &["/createdTime", "integer"]);
    eprintln!("{e}");
}

#[test]
fn sim_with_fractional_or_string_integer_fields_fails() {
    expect_err(
        validate_schema("Sim", &with(sample_sim(), "/createdTime", json!(1.5))),
        &["/createdTime"],
    );
    expect_err(
        validate_schema(
            "Sim",
            &with(
                sample_sim(),
                "/arcSessionStatus/lastUpdatedAt",
                json!("1700000000000"),
            ),
        ),
        &["/arcSessionStatus/lastUpdatedAt"],
    );
}

#[test]
fn sim_with_string_termination_enabled_fails() {
    let sim = with(sample_sim(), "/terminationEnabled", json!("false"));
    expect_err(
        validate_schema("Sim", &sim),
        &["/terminationEnabled", "boolean"],
    );
}

#[test]
fn sim_with_string_allowed_ips_fails() {
    let sim = with(sample_sim(), "/arcSessionStatus/arcAllowedIPs", json!("x"));
    expect_err(
        validate_schema("Sim", &sim),
        &["/arcSessionStatus/arcAllowedIPs", "array"],
    );
    let sim = with(sample_sim(), "/arcSessionStatus/arcAllowedIPs", json!([1]));
    expect_err(
        validate_schema("Sim", &sim),
        &["/arcSessionStatus/arcAllowedIPs/0"],
    );
}

#[test]
fn sim_enums_are_enforced() {
    let sim = with(sample_sim(), "/status", json!("running"));
    expect_err(validate_schema("Sim", &sim), &["/status"]);
    let sim = with(
        sample_sim(),
        "/profiles/8900001234567890123/subscribers/999990000000001/status",
        json!("online"),
    );
    expect_err(
        validate_schema("Sim", &sim),
        &["/subscribers/999990000000001/status"],
    );
}

#[test]
fn expiry_action_null_value_literal_allows_json_null() {
    let mut sim = sample_sim();
    sim["expiryAction"] = Value::Null;
    validate_schema("Sim", &sim).unwrap();
    sim["expiryAction"] = json!("doNothing");
    validate_schema("Sim", &sim).unwrap();
    sim["expiryAction"] = json!("explode");
    expect_err(validate_schema("Sim", &sim), &["/expiryAction"]);
    // Null elsewhere is still rejected (the spec does not mark it nullable).
    let sim = with(sample_sim(), "/groupId", Value::Null);
    expect_err(validate_schema("Sim", &sim), &["/groupId"]);
}

#[test]
fn tag_set_must_map_to_strings() {
    let sim = with(sample_sim(), "/tags", json!({"name": 1}));
    expect_err(validate_schema("Sim", &sim), &["/tags/name"]);
}

#[test]
fn auth_key_response_requires_create_date_time() {
    validate_schema(
        "AuthKeyResponse",
        &json!({"authKeyId": "keyId-abc", "createDateTime": 1722480500}),
    )
    .unwrap();
    expect_err(
        validate_schema("AuthKeyResponse", &json!({"authKeyId": "keyId-abc"})),
        &["createDateTime", "required"],
    );
}

#[test]
fn extra_fields_are_lenient_by_default_but_rejected_in_strict_mode() {
    let body = json!({"simId": "1", "arcSessionStatus": {"arcServerEndPoint": "x"}});
    validate_schema("Sim", &body).unwrap();
    let e = expect_err(
        validate_schema_strict("Sim", &body),
        &["/arcSessionStatus", "arcServerEndPoint"],
    );
    eprintln!("{e}");
    // arcd's marked extensions pass strict mode; an unmarked or misspelled name does not.
    let mut sim = sample_sim();
    sim["arcdSessionStats"] = json!({"deviceOnline": false, "rxBytes": 0, "txBytes": 0});
    validate_schema_strict("Sim", &sim).unwrap();
    sim["arcdsessionStats"] = json!({});
    expect_err(validate_schema_strict("Sim", &sim), &["arcdsessionStats"]);
    // Strictness goes through additionalProperties maps (profiles -> SimProfile) too.
    let mut sim = sample_sim();
    sim["profiles"]["8900001234567890123"]["primaryIMSI"] = json!("x");
    validate_schema("Sim", &sim).unwrap();
    expect_err(validate_schema_strict("Sim", &sim), &["primaryIMSI"]);
    // Free-form maps stay open in strict mode (tags, localInfo).
    let mut sim = sample_sim();
    sim["tags"]["anything"] = json!("goes");
    validate_schema_strict("Sim", &sim).unwrap();
}

#[test]
fn response_lookup_validates_and_refuses_undocumented_statuses() {
    let sim = sample_sim();
    validate_response("post", "/sims", 201, &sim).unwrap();
    validate_response("GET", "/sims/{sim_id}", 200, &sim).unwrap();
    assert_response_conforms("GET", "/sims", 200, &json!([sim.clone()]));
    // Convenience: /v1 prefix and concrete paths map onto templates.
    validate_response("GET", "/v1/sims/8900001234567890123", 200, &sim).unwrap();
    validate_response("POST", "/sims/x/enable_termination", 200, &sim).unwrap();

    let bad = with(sim.clone(), "/createdTime", json!("1"));
    expect_err(
        validate_response("post", "/sims", 201, &bad),
        &["/createdTime"],
    );
    expect_err(validate_response("GET", "/sims", 200, &sim), &["array"]);

    // Undocumented status: error, not a silent pass.
    expect_err(
        validate_response("post", "/sims", 200, &sim),
        &["status 200 is not documented", "201"],
    );
    // Documented status without a body schema: error too.
    expect_err(
        validate_response(
            "GET",
            "/sims/{sim_id}",
            404,
            &json!({"code": "x", "message": "y"}),
        ),
        &["no response body schema"],
    );
    // Unknown path / method.
    expect_err(
        validate_response("GET", "/nope", 200, &sim),
        &["not in the spec"],
    );
    expect_err(
        validate_response("PATCH", "/sims/{sim_id}", 200, &sim),
        &["no PATCH operation"],
    );
    assert!(!response_has_json_body("DELETE", "/groups/{group_id}", 204).unwrap());
    assert!(response_has_json_body("POST", "/sims/{sim_id}/sessions/arc", 200).unwrap());
    assert!(documented_statuses("GET", "/sims/{sim_id}")
        .unwrap()
        .contains(&"404".to_owned()));
}

#[test]
fn strict_response_check() {
    let body = json!({
        "arcAllowedIPs": ["100.127.0.0/16"],
        "arcClientPeerIpAddress": "100.127.10.20",
        "arcClientPeerPublicKey": "pub",
        "arcServerEndpoint": "rp.example.net:11010",
        "arcServerPeerPublicKey": "srv"
    });
    validate_response_strict("POST", "/sims/{sim_id}/sessions/arc", 200, &body).unwrap();
    let mut typo = body.clone();
    typo["arcServerEndPoint"] = json!("x");
    validate_response("POST", "/sims/{sim_id}/sessions/arc", 200, &typo).unwrap();
    expect_err(
        validate_response_strict("POST", "/sims/{sim_id}/sessions/arc", 200, &typo),
        &["arcServerEndPoint"],
    );
}

#[test]
fn session_event_created_time_is_a_string_in_the_spec() {
    let ok = json!({"createdTime": "2024-01-01T00:00:00Z", "time": 1700000000000u64, "event": "Created"});
    validate_schema("SessionEvent", &ok).unwrap();
    let bad = json!({"createdTime": 1700000000000u64, "time": 1700000000000u64});
    expect_err(
        validate_schema("SessionEvent", &bad),
        &["/createdTime", "string"],
    );
    expect_err(
        validate_response("GET", "/sims/{sim_id}/events/sessions", 200, &json!([bad])),
        &["/0/createdTime"],
    );
}

#[test]
fn array_checks() {
    let sims = json!([sample_sim(), {"simId": "2"}]);
    validate_array_of("Sim", &sims).unwrap();
    validate_array_of_strict("Sim", &sims).unwrap();
    validate_array_of("Sim", &json!([])).unwrap();
    assert_array_conforms("Sim", &sims);

    expect_err(
        validate_array_of("Sim", &sample_sim()),
        &["expected a JSON array"],
    );
    let bad = json!([sample_sim(), {"simId": 2}]);
    expect_err(validate_array_of("Sim", &bad), &["/1/simId"]);
    let keys = json!([
        {"authKeyId": "keyId-a", "createDateTime": 1, "lastUsedDateTime": 2},
        {"authKeyId": "keyId-b"}
    ]);
    expect_err(
        validate_array_of("AuthKeyResponse", &keys),
        &["/1", "createDateTime"],
    );
}

#[test]
fn overlapping_one_of_branches_do_not_reject_valid_destinations() {
    let vpg = json!({
        "vpgId": "vpg-1",
        "type": 14,
        "status": "running",
        "inspection": {"enabled": true, "report": {"enabled": true, "destination": {
            "provider": "aws", "service": "aws-iot", "resourceUrl": "https://x.iot.ap-northeast-1.amazonaws.com/t"
        }}}
    });
    validate_schema("VirtualPrivateGateway", &vpg).unwrap();
    validate_schema_strict("VirtualPrivateGateway", &vpg).unwrap();
    validate_response("POST", "/virtual_private_gateways", 201, &vpg).unwrap();
    let bad = with(
        vpg.clone(),
        "/inspection/report/destination",
        json!("aws-iot"),
    );
    expect_err(
        validate_schema("VirtualPrivateGateway", &bad),
        &["/inspection/report/destination"],
    );
    let bad = with(vpg, "/type", json!(16));
    expect_err(validate_schema("VirtualPrivateGateway", &bad), &["/type"]);
}

#[test]
fn unknown_schema_name_is_an_error() {
    expect_err(
        validate_schema("Simm", &json!({})),
        &["no schema `Simm`", "Sim"],
    );
}

#[test]
#[should_panic(expected = "/createdTime")]
fn assert_conforms_panics_with_instance_path() {
    assert_conforms("Sim", &with(sample_sim(), "/createdTime", json!("1")));
}
