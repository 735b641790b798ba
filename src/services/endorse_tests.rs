use serde_json::{json, Map, Value};

use super::*;

fn namespace(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

#[test]
fn absent_settings_are_off_with_the_imsi_and_ten_minutes() {
    let settings = Settings::of(None);
    assert!(!settings.enabled);
    assert!(settings.imsi && !settings.sim_id && !settings.request_parameters);
    assert_eq!(
        settings.token_timeout_seconds,
        DEFAULT_TOKEN_TIMEOUT_SECONDS
    );
    assert_eq!(settings.allow_origin, None);
}

#[test]
fn the_documented_keys_are_read() {
    let settings = Settings::of(Some(&namespace(json!({
        "enabled": true,
        "parametersToEndorse": {"imsi": false, "simId": true, "msisdn": true, "imei": true,
                                "requestParameters": true},
        "tokenTimeoutSeconds": 30,
        "allowOrigin": "https://example.com",
        "authorizedRedirectUrls": ["https://example.com/login"],
    }))));
    assert_eq!(
        settings,
        Settings {
            enabled: true,
            imsi: false,
            sim_id: true,
            msisdn: true,
            imei: true,
            request_parameters: true,
            token_timeout_seconds: 30,
            allow_origin: Some("https://example.com".into()),
            authorized_redirect_urls: vec!["https://example.com/login".into()],
        }
    );
}

#[test]
fn bad_values_are_refused_at_configuration_time() {
    let refused = [
        ("enabled", json!("yes")),
        ("parametersToEndorse", json!({"iccid": true})),
        ("parametersToEndorse", json!({"imsi": "true"})),
        ("parametersToEndorse", json!(true)),
        ("tokenTimeoutSeconds", json!(0)),
        ("tokenTimeoutSeconds", json!(-5)),
        ("tokenTimeoutSeconds", json!(MAX_TOKEN_TIMEOUT_SECONDS + 1)),
        ("tokenTimeoutSeconds", json!(1.5)),
        ("allowOrigin", json!(["https://example.com"])),
        ("allowOrigin", json!("bad\norigin")),
        ("authorizedRedirectUrls", json!("https://example.com")),
        ("authorizedRedirectUrls", json!(["/relative"])),
        ("authorizedRedirectUrls", json!(["ftp://example.com/x"])),
    ];
    for (key, value) in refused {
        assert!(
            check_setting(key, &value).is_err(),
            "{key} = {value} was accepted"
        );
    }
    let accepted = [
        ("enabled", json!(false)),
        (
            "parametersToEndorse",
            json!({"imsi": true, "requestParameters": false}),
        ),
        ("tokenTimeoutSeconds", json!(600)),
        ("allowOrigin", json!("")),
        (
            "authorizedRedirectUrls",
            json!(["https://soracom.io", "http://localhost:3000"]),
        ),
        ("somethingElse", json!({"kept": "as is"})),
    ];
    for (key, value) in accepted {
        assert_eq!(check_setting(key, &value), Ok(()), "{key} = {value}");
    }
}

#[test]
fn a_post_body_is_json_even_under_a_form_content_type_else_form_fields() {
    let form = Some("application/x-www-form-urlencoded");
    assert_eq!(
        body_parameters(br#"{"username": "sora", "n": 1}"#, form),
        Some(namespace(json!({"username": "sora", "n": 1})))
    );
    assert_eq!(
        body_parameters(b"username=sora&sessionId=123", form),
        Some(namespace(json!({"username": "sora", "sessionId": "123"})))
    );
    assert_eq!(body_parameters(b"[1, 2]", Some("application/json")), None);
}

#[test]
fn the_token_goes_into_the_redirect_url_query() {
    let response = redirect_with_token("https://example.com/login?x=1", "a.b.c");
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        response.headers()[header::LOCATION],
        "https://example.com/login?x=1&soracom_endorse_token=a.b.c"
    );
}
