//! The `operation` label of API metrics: the operationId of `openapi.yaml` (SORACOM's names,
//! such as `createSim`), found by method and matched route template. Never the raw path, so a
//! client probing random paths cannot make the label set grow.

use std::collections::HashMap;
use std::sync::LazyLock;

/// Requests that matched no route (404 and the like) share this one label value.
pub const UNMATCHED: &str = "unmatched";

/// (method in upper case, route template with the `/v1` prefix) → operationId.
static OPERATIONS: LazyLock<HashMap<(String, String), &'static str>> =
    LazyLock::new(|| operation_ids(crate::api::OPENAPI));

/// Reads the operationIds out of the document arcd serves. The document is generated with a
/// fixed layout (paths at two spaces, methods at four, their keys at six), so a line scan is
/// enough and keeps a YAML parser out of the binary.
fn operation_ids(document: &'static str) -> HashMap<(String, String), &'static str> {
    let mut operations = HashMap::new();
    let mut in_paths = false;
    let (mut path, mut method) = (None::<&str>, None::<&str>);
    for line in document.lines() {
        // Blank lines occur inside descriptions; only a top-level key ends `paths`.
        if line.is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            (path, method) = (Some(p), None);
        } else if let Some(m) = line
            .strip_prefix("    ")
            .and_then(|m| m.strip_suffix(':'))
            .filter(|m| !m.starts_with(' '))
        {
            method = Some(m);
        } else if let Some(id) = line.strip_prefix("      operationId: ") {
            if let (Some(p), Some(m)) = (path, method) {
                operations.insert((m.to_ascii_uppercase(), format!("/v1/{p}")), id.trim());
            }
        }
    }
    operations
}

/// The label for a request: its operationId, else the route template for routes outside the
/// API document (the web page, `/openapi.yaml`), else `unmatched`.
pub fn operation_of(method: &str, route: Option<&str>) -> String {
    let Some(route) = route else {
        return UNMATCHED.to_string();
    };
    match OPERATIONS.get(&(method.to_string(), route.to_string())) {
        Some(id) => (*id).to_string(),
        None => route.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soracom_operation_ids_by_method_and_route() {
        assert_eq!(operation_of("POST", Some("/v1/sims")), "createSim");
        assert_eq!(operation_of("GET", Some("/v1/sims")), "listSims");
        assert_eq!(operation_of("GET", Some("/v1/sims/{sim_id}")), "getSim");
        assert_eq!(operation_of("POST", Some("/v1/auth")), "auth");
        assert_eq!(operation_of("GET", Some("/openapi.yaml")), "/openapi.yaml");
        assert_eq!(operation_of("GET", None), UNMATCHED);
    }

    #[test]
    fn every_documented_operation_is_found() {
        let documented = crate::api::OPENAPI
            .lines()
            .filter(|l| l.starts_with("      operationId: "))
            .count();
        assert_eq!(OPERATIONS.len(), documented);
    }
}
