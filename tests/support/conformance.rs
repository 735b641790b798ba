//! Conformance checks of JSON response bodies against the official SORACOM API
//! (Arc subset) OpenAPI 3.0 document.
//!
//! Include from an integration test with either
//!
//! ```ignore
//! #[path = "support/conformance.rs"]
//! mod conformance;
//! ```
//!
//! or `mod support;` (which exposes `support::conformance`).
//!
//! The spec is read from `tests/fixtures/soracom-api-arc-subset.yaml`: a verbatim copy of
//! SORACOM's official Arc subset kept in the repository (pinned by SHA-256 in
//! `tests/conformance_selftest.rs`), so a clean clone has everything it needs.
//!
//! OpenAPI 3.0 schemas are converted to JSON Schema draft 4 before compilation:
//!
//! * `nullable: true` allows `null` (type and enum);
//! * an enum containing the literal `"(null value)"` (Sim.expiryAction) also allows `null`;
//! * siblings of `$ref` are ignored, as OpenAPI 3.0 mandates;
//! * `oneOf` is checked as `anyOf` (the spec's only `oneOf`, FunnelConfiguration.destination,
//!   has overlapping branches, so a concrete destination would always match two of them);
//! * annotation-only keys (`example`, `description`, `default`, `x-*`, ...) are dropped;
//! * format assertions are disabled (`int64`, `SimId`, `IMSI`, ... are annotations only;
//!   `type: integer` still rejects strings and fractions).
//!
//! The spec's schemas mostly do not set `additionalProperties: false`, so undeclared
//! properties are accepted by the default validators. The `*_strict` variants add
//! `additionalProperties: false` to every object schema that declares `properties`
//! (and has no `additionalProperties` of its own), recursively, so misspelled field
//! names (e.g. `arcServerEndPoint`) are caught.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};

/// In-repo copy of the spec, relative to `CARGO_MANIFEST_DIR`.
pub const SPEC_FIXTURE_PATH: &str = "tests/fixtures/soracom-api-arc-subset.yaml";

/// Maximum number of individual schema errors listed in one message.
const MAX_ERRORS_SHOWN: usize = 20;
/// Maximum length of the pretty-printed body appended to an error message.
const MAX_BODY_SHOWN: usize = 4000;

struct Spec {
    source: PathBuf,
    /// The whole OpenAPI document as JSON.
    raw: Value,
    /// `components` converted to JSON Schema (lenient, as the spec says).
    components: Value,
    /// `components` converted to JSON Schema with undeclared properties rejected.
    components_strict: Value,
}

type Cache = Mutex<HashMap<String, Arc<jsonschema::Validator>>>;

static SPEC: OnceLock<Result<Spec, String>> = OnceLock::new();
static VALIDATORS: OnceLock<Cache> = OnceLock::new();

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// Validates `body` against `#/components/schemas/<schema_name>`.
pub fn validate_schema(schema_name: &str, body: &Value) -> Result<(), String> {
    validate_named(schema_name, body, false)
}

/// Like [`validate_schema`], but additionally rejects properties the schema does not declare
/// (recursively through `properties`, `items`, `$ref` and `additionalProperties` maps).
pub fn validate_schema_strict(schema_name: &str, body: &Value) -> Result<(), String> {
    validate_named(schema_name, body, true)
}

/// Validates that `body` is an array whose items each match `#/components/schemas/<schema_name>`.
pub fn validate_array_of(schema_name: &str, body: &Value) -> Result<(), String> {
    validate_array_named(schema_name, body, false)
}

/// Strict variant of [`validate_array_of`] (undeclared properties rejected).
pub fn validate_array_of_strict(schema_name: &str, body: &Value) -> Result<(), String> {
    validate_array_named(schema_name, body, true)
}

/// Looks up `method` + `path_template` (as written in the spec, e.g. `/sims/{sim_id}`, without
/// `/v1`) and validates `body` against the `application/json` schema documented for `status`.
///
/// Errors (rather than passing) when the path, method or status is not documented, or when the
/// documented response has no JSON schema. A leading `/v1` and concrete paths such as
/// `/sims/8900...` are tolerated: they are mapped onto the matching template.
pub fn validate_response(
    method: &str,
    path_template: &str,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    validate_response_impl(method, path_template, status, body, false)
}

/// Strict variant of [`validate_response`] (undeclared properties rejected).
pub fn validate_response_strict(
    method: &str,
    path_template: &str,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    validate_response_impl(method, path_template, status, body, true)
}

/// Status codes (as written in the spec, e.g. `"200"`, `"404"`) documented for an operation.
pub fn documented_statuses(method: &str, path_template: &str) -> Result<Vec<String>, String> {
    let spec = spec()?;
    let (path, op) = find_operation(spec, method, path_template)?;
    let responses = op
        .get("responses")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            format!(
                "{} {path}: operation has no responses",
                method.to_uppercase()
            )
        })?;
    Ok(responses.keys().cloned().collect())
}

/// Whether the spec documents a JSON body for this response (e.g. `false` for a 204).
/// Errors if the operation or status is not documented at all.
pub fn response_has_json_body(
    method: &str,
    path_template: &str,
    status: u16,
) -> Result<bool, String> {
    let spec = spec()?;
    let (path, op) = find_operation(spec, method, path_template)?;
    let label = format!("{} {path} -> {status}", method.to_uppercase());
    let response = find_response(spec, op, status, &label)?;
    Ok(json_schema_of_response(response, &label).is_ok())
}

/// Names of all schemas under `#/components/schemas`.
pub fn schema_names() -> Result<Vec<String>, String> {
    let spec = spec()?;
    Ok(spec
        .raw
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default())
}

/// The file the spec was loaded from.
pub fn spec_source() -> Result<PathBuf, String> {
    Ok(spec()?.source.clone())
}

/// The raw OpenAPI document (as JSON), for tests that want to inspect it.
pub fn spec_document() -> Result<&'static Value, String> {
    Ok(&spec()?.raw)
}

/// Panics with a readable message unless `body` conforms to `#/components/schemas/<schema_name>`.
#[track_caller]
pub fn assert_conforms(schema_name: &str, body: &Value) {
    if let Err(e) = validate_schema(schema_name, body) {
        panic!("{e}");
    }
}

/// Panicking variant of [`validate_schema_strict`].
#[track_caller]
pub fn assert_conforms_strict(schema_name: &str, body: &Value) {
    if let Err(e) = validate_schema_strict(schema_name, body) {
        panic!("{e}");
    }
}

/// Panicking variant of [`validate_array_of`].
#[track_caller]
pub fn assert_array_conforms(schema_name: &str, body: &Value) {
    if let Err(e) = validate_array_of(schema_name, body) {
        panic!("{e}");
    }
}

/// Panicking variant of [`validate_array_of_strict`].
#[track_caller]
pub fn assert_array_conforms_strict(schema_name: &str, body: &Value) {
    if let Err(e) = validate_array_of_strict(schema_name, body) {
        panic!("{e}");
    }
}

/// Panicking variant of [`validate_response`].
#[track_caller]
pub fn assert_response_conforms(method: &str, path_template: &str, status: u16, body: &Value) {
    if let Err(e) = validate_response(method, path_template, status, body) {
        panic!("{e}");
    }
}

/// Panicking variant of [`validate_response_strict`].
#[track_caller]
pub fn assert_response_conforms_strict(
    method: &str,
    path_template: &str,
    status: u16,
    body: &Value,
) {
    if let Err(e) = validate_response_strict(method, path_template, status, body) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

fn spec() -> Result<&'static Spec, String> {
    SPEC.get_or_init(load_spec).as_ref().map_err(Clone::clone)
}

fn spec_candidates() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    vec![root.join(SPEC_FIXTURE_PATH)]
}

fn load_spec() -> Result<Spec, String> {
    let candidates = spec_candidates();
    let source = candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "conformance: SORACOM API spec not found; looked at {}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let text = std::fs::read_to_string(&source)
        .map_err(|e| format!("conformance: cannot read {}: {e}", source.display()))?;
    let raw: Value = serde_yaml::from_str(&text)
        .map_err(|e| format!("conformance: cannot parse {}: {e}", source.display()))?;
    let raw_components = raw
        .get("components")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("conformance: {} has no `components`", source.display()))?;

    let convert_components = |strict: bool| -> Value {
        let mut out = Map::new();
        if let Some(Value::Object(schemas)) = raw_components.get("schemas") {
            let converted: Map<String, Value> = schemas
                .iter()
                .map(|(name, s)| (name.clone(), convert_schema(s, strict)))
                .collect();
            out.insert("schemas".to_owned(), Value::Object(converted));
        }
        Value::Object(out)
    };

    Ok(Spec {
        components: convert_components(false),
        components_strict: convert_components(true),
        source,
        raw,
    })
}

// ---------------------------------------------------------------------------------------------
// OpenAPI 3.0 schema -> JSON Schema (draft 4)
// ---------------------------------------------------------------------------------------------

/// The literal enum value the spec uses to mean "JSON null" (Sim.expiryAction).
const NULL_VALUE_LITERAL: &str = "(null value)";

/// Keys that carry no validation meaning (or that OpenAPI 3.0 defines differently) and are
/// dropped. Draft-4 `id` handling could be confused by stray `id` keys in examples, which is
/// another reason to drop `example`/`default`.
fn is_annotation_key(key: &str) -> bool {
    key.starts_with("x-")
        || matches!(
            key,
            "nullable"
                | "example"
                | "examples"
                | "default"
                | "description"
                | "title"
                | "discriminator"
                | "readOnly"
                | "writeOnly"
                | "xml"
                | "externalDocs"
                | "deprecated"
        )
}

fn convert_schema(schema: &Value, strict: bool) -> Value {
    let Value::Object(obj) = schema else {
        // Booleans (e.g. `additionalProperties: false`) and anything odd pass through.
        return schema.clone();
    };
    let nullable_flag = obj.get("nullable") == Some(&Value::Bool(true));

    // OpenAPI 3.0: siblings of `$ref` are ignored.
    if let Some(reference) = obj.get("$ref") {
        let target = json!({ "$ref": reference });
        return if nullable_flag {
            json!({ "anyOf": [target, { "type": "null" }] })
        } else {
            target
        };
    }

    let mut out = Map::new();
    for (key, value) in obj {
        if is_annotation_key(key) {
            continue;
        }
        let converted = match key.as_str() {
            "properties" => match value {
                Value::Object(props) => Value::Object(
                    props
                        .iter()
                        .map(|(name, s)| (name.clone(), convert_schema(s, strict)))
                        .collect(),
                ),
                other => other.clone(),
            },
            "additionalProperties" | "items" | "not" => convert_schema(value, strict),
            "allOf" | "anyOf" | "oneOf" => match value {
                Value::Array(list) => {
                    Value::Array(list.iter().map(|s| convert_schema(s, strict)).collect())
                }
                other => other.clone(),
            },
            _ => value.clone(),
        };
        // The spec's only `oneOf` (FunnelConfiguration.destination) lists the generic
        // FunnelDestination next to its specialisations, so every concrete destination matches
        // two branches and `oneOf` could never pass. Validate it as `anyOf`.
        let key = if key == "oneOf" {
            "anyOf"
        } else {
            key.as_str()
        };
        out.insert(key.to_owned(), converted);
    }

    let null_literal_in_enum = obj
        .get("enum")
        .and_then(Value::as_array)
        .is_some_and(|values| values.iter().any(|v| v == NULL_VALUE_LITERAL));
    if nullable_flag || null_literal_in_enum {
        allow_null(&mut out);
    }

    if strict
        && out.contains_key("properties")
        && !out.contains_key("additionalProperties")
        && !["allOf", "anyOf", "oneOf"]
            .iter()
            .any(|k| out.contains_key(*k))
    {
        out.insert("additionalProperties".to_owned(), Value::Bool(false));
        // arcd's own additions are marked by an `arcd` prefix (e.g. `Sim.arcdSessionStats`, see
        // openapi.yaml); everything else undeclared is still rejected.
        out.insert(
            "patternProperties".to_owned(),
            serde_json::json!({ ARCD_EXTENSION_PATTERN: {} }),
        );
    }

    Value::Object(out)
}

fn allow_null(schema: &mut Map<String, Value>) {
    match schema.get_mut("type") {
        Some(Value::String(t)) => {
            let t = t.clone();
            schema.insert("type".to_owned(), json!([t, "null"]));
        }
        Some(Value::Array(types)) if !types.iter().any(|t| t == "null") => {
            types.push(json!("null"));
        }
        _ => {} // no type constraint: null is already allowed by it
    }
    if let Some(Value::Array(values)) = schema.get_mut("enum") {
        if !values.iter().any(Value::is_null) {
            values.push(Value::Null);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compilation and validation
// ---------------------------------------------------------------------------------------------

fn components_for(spec: &Spec, strict: bool) -> &Value {
    if strict {
        &spec.components_strict
    } else {
        &spec.components
    }
}

fn mode(strict: bool) -> &'static str {
    if strict {
        "strict"
    } else {
        "lenient"
    }
}

/// Makes `schema` the root of a document that also carries the converted `components`, so that
/// `#/components/schemas/X` references resolve.
fn rooted(schema: Value, spec: &Spec, strict: bool) -> Value {
    let mut root = match schema {
        Value::Object(map) => map,
        other => {
            let mut m = Map::new();
            m.insert("allOf".to_owned(), json!([other]));
            m
        }
    };
    root.insert(
        "components".to_owned(),
        components_for(spec, strict).clone(),
    );
    Value::Object(root)
}

fn compiled(
    key: String,
    build: impl FnOnce() -> Result<Value, String>,
) -> Result<Arc<jsonschema::Validator>, String> {
    let cache = VALIDATORS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut guard = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(v) = guard.get(&key) {
        return Ok(Arc::clone(v));
    }
    let schema = build()?;
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(false)
        .build(&schema)
        .map_err(|e| format!("conformance: cannot compile schema for {key}: {e}"))?;
    let validator = Arc::new(validator);
    guard.insert(key, Arc::clone(&validator));
    Ok(validator)
}

/// Property names of arcd extensions, allowed by strict validation.
pub const ARCD_EXTENSION_PATTERN: &str = "^arcd[A-Z]";

fn run(validator: &jsonschema::Validator, body: &Value, label: &str) -> Result<(), String> {
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| {
            let at = e.instance_path().as_str();
            let at = if at.is_empty() { "<root>" } else { at };
            format!("  at {at}: {e} (schema: {})", e.schema_path().as_str())
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    let total = errors.len();
    let mut shown: Vec<String> = errors.into_iter().take(MAX_ERRORS_SHOWN).collect();
    if total > MAX_ERRORS_SHOWN {
        shown.push(format!("  ... and {} more", total - MAX_ERRORS_SHOWN));
    }
    let mut pretty = serde_json::to_string_pretty(body).unwrap_or_else(|_| body.to_string());
    if pretty.len() > MAX_BODY_SHOWN {
        let mut cut = MAX_BODY_SHOWN;
        while !pretty.is_char_boundary(cut) {
            cut -= 1;
        }
        pretty.truncate(cut);
        pretty.push_str("\n... (truncated)");
    }
    Err(format!(
        "{label}: body does not conform to the SORACOM API spec ({total} error(s)):\n{}\nbody:\n{pretty}",
        shown.join("\n")
    ))
}

fn check_schema_name(spec: &Spec, schema_name: &str) -> Result<(), String> {
    let schemas = spec
        .raw
        .pointer("/components/schemas")
        .and_then(Value::as_object);
    match schemas {
        Some(s) if s.contains_key(schema_name) => Ok(()),
        Some(s) => Err(format!(
            "conformance: no schema `{schema_name}` in #/components/schemas (known: {})",
            s.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
        None => Err("conformance: spec has no #/components/schemas".to_owned()),
    }
}

fn validate_named(schema_name: &str, body: &Value, strict: bool) -> Result<(), String> {
    let spec = spec()?;
    check_schema_name(spec, schema_name)?;
    let validator = compiled(format!("schema {} {schema_name}", mode(strict)), || {
        Ok(rooted(
            json!({ "$ref": format!("#/components/schemas/{schema_name}") }),
            spec,
            strict,
        ))
    })?;
    run(
        &validator,
        body,
        &format!("{schema_name} ({} schema check)", mode(strict)),
    )
}

fn validate_array_named(schema_name: &str, body: &Value, strict: bool) -> Result<(), String> {
    let spec = spec()?;
    check_schema_name(spec, schema_name)?;
    let label = format!("[{schema_name}] ({} schema check)", mode(strict));
    if !body.is_array() {
        return Err(format!(
            "{label}: expected a JSON array, got {}",
            json_type_name(body)
        ));
    }
    let validator = compiled(format!("array {} {schema_name}", mode(strict)), || {
        Ok(rooted(
            json!({
                "type": "array",
                "items": { "$ref": format!("#/components/schemas/{schema_name}") }
            }),
            spec,
            strict,
        ))
    })?;
    run(&validator, body, &label)
}

fn validate_response_impl(
    method: &str,
    path_template: &str,
    status: u16,
    body: &Value,
    strict: bool,
) -> Result<(), String> {
    let spec = spec()?;
    let (path, op) = find_operation(spec, method, path_template)?;
    let method_uc = method.to_uppercase();
    let label = format!("{method_uc} {path} -> {status}");
    let response = find_response(spec, op, status, &label)?;
    let schema = json_schema_of_response(response, &label)?;
    let validator = compiled(
        format!("response {} {method_uc} {path} {status}", mode(strict)),
        || Ok(rooted(convert_schema(schema, strict), spec, strict)),
    )?;
    run(
        &validator,
        body,
        &format!("{label} ({} response check)", mode(strict)),
    )
}

// ---------------------------------------------------------------------------------------------
// Spec lookup
// ---------------------------------------------------------------------------------------------

/// Finds the operation object; returns the spec's path template and the operation.
fn find_operation<'s>(
    spec: &'s Spec,
    method: &str,
    path_template: &str,
) -> Result<(&'s str, &'s Value), String> {
    let paths = spec
        .raw
        .get("paths")
        .and_then(Value::as_object)
        .ok_or_else(|| "conformance: spec has no `paths`".to_owned())?;
    let method_lc = method.to_lowercase();

    let mut wanted = path_template.split('?').next().unwrap_or("").to_owned();
    if wanted.len() > 1 && wanted.ends_with('/') {
        wanted.pop();
    }
    let stripped = wanted
        .strip_prefix("/v1")
        .filter(|rest| rest.starts_with('/'))
        .map(str::to_owned);

    let mut chosen: Option<&'s String> = None;
    for candidate in std::iter::once(&wanted).chain(stripped.iter()) {
        if let Some((k, _)) = paths.get_key_value(candidate.as_str()) {
            chosen = Some(k);
            break;
        }
    }
    if chosen.is_none() {
        // A concrete path such as /sims/8900.../tags: match it against the templates,
        // preferring the template with the most literal segments.
        for candidate in std::iter::once(&wanted).chain(stripped.iter()) {
            let best = paths
                .keys()
                .filter_map(|t| template_match_score(t, candidate).map(|score| (score, t)))
                .max_by_key(|(score, _)| *score);
            if let Some((_, t)) = best {
                chosen = Some(t);
                break;
            }
        }
    }
    let path = chosen.ok_or_else(|| {
        format!(
            "conformance: path `{path_template}` is not in the spec (known paths: {})",
            paths.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;

    let item = &paths[path.as_str()];
    match item.get(&method_lc) {
        Some(op) if op.is_object() => Ok((path.as_str(), op)),
        _ => {
            let methods: Vec<String> = item
                .as_object()
                .map(|m| {
                    m.keys()
                        .filter(|k| {
                            matches!(
                                k.as_str(),
                                "get" | "put" | "post" | "delete" | "patch" | "head" | "options"
                            )
                        })
                        .map(|k| k.to_uppercase())
                        .collect()
                })
                .unwrap_or_default();
            Err(format!(
                "conformance: spec has no {} operation on `{path}` (documented methods: {})",
                method.to_uppercase(),
                methods.join(", ")
            ))
        }
    }
}

/// `Some(number of literal segments)` if `concrete` matches `template`.
fn template_match_score(template: &str, concrete: &str) -> Option<usize> {
    let t: Vec<&str> = template.split('/').collect();
    let c: Vec<&str> = concrete.split('/').collect();
    if t.len() != c.len() {
        return None;
    }
    let mut literal = 0;
    for (ts, cs) in t.iter().zip(&c) {
        if ts.starts_with('{') && ts.ends_with('}') {
            if cs.is_empty() {
                return None;
            }
        } else if ts == cs {
            literal += 1;
        } else {
            return None;
        }
    }
    Some(literal)
}

fn find_response<'s>(
    spec: &'s Spec,
    op: &'s Value,
    status: u16,
    label: &str,
) -> Result<&'s Value, String> {
    let responses = op
        .get("responses")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{label}: operation documents no responses"))?;
    let exact = status.to_string();
    let range_uc = format!("{}XX", status / 100);
    let range_lc = format!("{}xx", status / 100);
    let response = [exact.as_str(), range_uc.as_str(), range_lc.as_str()]
        .iter()
        .find_map(|k| responses.get(*k))
        .ok_or_else(|| {
            format!(
                "{label}: status {status} is not documented in the spec (documented: {})",
                responses.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
    resolve_local_ref(spec, response, label)
}

fn resolve_local_ref<'s>(
    spec: &'s Spec,
    value: &'s Value,
    label: &str,
) -> Result<&'s Value, String> {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .ok_or_else(|| format!("{label}: non-local $ref `{r}` is not supported"))?;
            spec.raw
                .pointer(pointer)
                .ok_or_else(|| format!("{label}: unresolvable $ref `{r}`"))
        }
        None => Ok(value),
    }
}

fn json_schema_of_response<'s>(response: &'s Value, label: &str) -> Result<&'s Value, String> {
    let description = response
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("");
    let content = response
        .get("content")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            format!(
                "{label}: the spec documents this status (\"{description}\") but gives no response body schema"
            )
        })?;
    let media = content
        .get("application/json")
        .or_else(|| {
            content
                .iter()
                .find(|(k, _)| k.starts_with("application/json"))
                .map(|(_, v)| v)
        })
        .ok_or_else(|| {
            format!(
                "{label}: the spec documents no application/json body for this status (media types: {})",
                content.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
    media
        .get("schema")
        .ok_or_else(|| format!("{label}: application/json content has no schema"))
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
