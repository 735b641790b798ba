//! Where Funnel and Funk send a device's data, read from the group namespaces `SoracomFunnel` and
//! `SoracomFunk` (keys as on the platform: `enabled`, `destination`, `credentialsId`,
//! `contentType`), and the credentials to present there. The same parser checks a group's
//! configuration when the API writes it, so a bad destination is a 400 at configuration time
//! rather than a failure at the first delivery.
//!
//! `destination` = `{"provider": "mqtt", "resourceUrl": "mqtt[s]://host[:port]/topic"}` (Funnel
//! only: Mosquitto, AWS IoT Core, Azure IoT Hub, ...) or `{"provider": "http", "resourceUrl":
//! "http[s]://..."}` (a webhook for Funnel, a function URL for Funk).

use axum::http::Uri;
use serde_json::{Map, Value};

use crate::ids::OperatorId;
use crate::store::credentials::{self, CredentialsRecord};
use crate::store::db::Db;
use crate::store::groups::{self, Configuration};
use crate::store::{Entity, Rule, StoreError};

pub const FUNNEL: &str = "SoracomFunnel";
pub const FUNK: &str = "SoracomFunk";
const MQTT_PORT: u16 = 1883;
const MQTTS_PORT: u16 = 8883;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Mqtt {
        tls: bool,
        host: String,
        port: u16,
        topic: String,
    },
    Http {
        url: String,
    },
}

/// One switched-on service's destination, as configured.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: Target,
    /// The `destination` object as the group has it (Funnel's envelope repeats it).
    pub destination: Value,
    pub credentials_id: Option<String>,
    /// `contentType: "json"`: anything else than a JSON document is refused.
    pub require_json: bool,
}

/// A secret to present to the destination. Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Secret {
    Login { username: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Login { username, .. } => write!(f, "Login({username}, <redacted>)"),
            Secret::Token(_) => write!(f, "Token(<redacted>)"),
        }
    }
}

/// The route of `namespace` in `configuration`: `Ok(None)` when the service is off (no
/// `enabled: true`), `Err` with the reason when it is on but unusable.
pub fn route(configuration: &Configuration, namespace: &str) -> Result<Option<Route>, String> {
    let Some(values) = configuration.get(namespace) else {
        return Ok(None);
    };
    match values.get("enabled") {
        None | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => {}
        Some(_) => return Err(format!("{namespace}.enabled must be true or false")),
    }
    let destination = values
        .get("destination")
        .ok_or_else(|| format!("{namespace} is enabled but has no destination"))?;
    let target = target_of(namespace, destination)?;
    let credentials_id = match values.get("credentialsId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        Some(_) => return Err(format!("{namespace}.credentialsId must be a string")),
    };
    let require_json = content_type_is_json(namespace, values)?;
    Ok(Some(Route {
        target,
        destination: destination.clone(),
        credentials_id,
        require_json,
    }))
}

fn content_type_is_json(namespace: &str, values: &Map<String, Value>) -> Result<bool, String> {
    match values.get("contentType") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(kind)) => match kind.as_str() {
            "json" => Ok(true),
            "text" | "unspecified" | "binary" => Ok(false),
            other => Err(format!(
                "{namespace}.contentType `{other}` is not one of json, text, unspecified, binary"
            )),
        },
        Some(_) => Err(format!("{namespace}.contentType must be a string")),
    }
}

fn target_of(namespace: &str, destination: &Value) -> Result<Target, String> {
    let field = |name: &str| destination.get(name).and_then(Value::as_str);
    let url = field("resourceUrl")
        .ok_or_else(|| format!("{namespace}.destination.resourceUrl must be a URL string"))?;
    let provider = field("provider").unwrap_or("");
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{namespace}.destination.resourceUrl `{url}` is not a URL: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or("");
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{namespace}.destination.resourceUrl `{url}` has no host"))?;
    match (namespace, provider, scheme) {
        (FUNNEL, "mqtt", "mqtt" | "mqtts") => {
            let tls = scheme == "mqtts";
            let topic = uri.path().trim_start_matches('/').to_string();
            if topic.is_empty() || url.contains(['+', '#', '?']) {
                return Err(format!(
                    "{namespace}.destination.resourceUrl `{url}` needs a topic without wildcards as its path, e.g. mqtt://broker:1883/devices/data"
                ));
            }
            Ok(Target::Mqtt {
                tls,
                host: host.trim_matches(['[', ']']).to_string(),
                port: uri
                    .port_u16()
                    .unwrap_or(if tls { MQTTS_PORT } else { MQTT_PORT }),
                topic,
            })
        }
        (_, "http", "http" | "https") => Ok(Target::Http {
            url: url.to_string(),
        }),
        (FUNNEL, _, _) => Err(format!(
            "{namespace}.destination must be provider mqtt with an mqtt:// or mqtts:// resourceUrl, or provider http with an http:// or https:// resourceUrl (got provider `{provider}`, `{url}`)"
        )),
        _ => Err(format!(
            "{namespace}.destination must be provider http with an http:// or https:// function URL (got provider `{provider}`, `{url}`)"
        )),
    }
}

/// The secret of `record` if its type can be presented to `target`.
pub fn secret_for(target: &Target, record: &CredentialsRecord) -> Result<Secret, String> {
    let field = |name: &str| {
        record
            .secret
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("credentials {} have no {name}", record.credentials_id))
    };
    match (record.kind.as_str(), target) {
        ("username-password-credentials", _) => Ok(Secret::Login {
            username: field("username")?,
            password: field("password")?,
        }),
        ("api-token-credentials", Target::Http { .. }) => Ok(Secret::Token(field("token")?)),
        (kind, _) => Err(format!(
            "credentials {} are of type {kind}, which this destination cannot use (MQTT takes username-password-credentials)",
            record.credentials_id
        )),
    }
}

/// The route of `namespace` and the secret it names; `Ok(None)` when the service is off.
pub fn resolve(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    configuration: &Configuration,
    namespace: &str,
) -> Result<Option<(Route, Option<Secret>)>, StoreError> {
    let invalid = |message: String| StoreError::Rule(Rule::InvalidServiceConfiguration(message));
    let Some(route) = route(configuration, namespace).map_err(invalid)? else {
        return Ok(None);
    };
    let secret = match &route.credentials_id {
        None => None,
        Some(id) => match credentials::get(db, operator_id, id) {
            Ok(record) => Some(secret_for(&route.target, &record).map_err(invalid)?),
            Err(StoreError::NotFound(Entity::Credentials)) => {
                return Err(invalid(format!(
                    "{namespace}.credentialsId `{id}` names no credentials of this operator; create them with POST /v1/credentials/{id}"
                )))
            }
            Err(e) => return Err(e),
        },
    };
    Ok(Some((route, secret)))
}

/// Checks a group's Funnel and Funk configuration as written, inside the writing transaction.
pub fn check_configuration(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    configuration: &Configuration,
) -> Result<(), StoreError> {
    for namespace in [FUNNEL, FUNK] {
        resolve(db, operator_id, configuration, namespace)?;
    }
    Ok(())
}

/// Re-checks every group whose Funnel or Funk configuration names `credentials_id`, after the
/// credentials changed or went away.
pub fn check_groups_using(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    credentials_id: &str,
) -> Result<(), StoreError> {
    let value = Value::String(credentials_id.to_string()).to_string();
    let rows = db.query(
        "SELECT DISTINCT c.group_id FROM group_configuration c JOIN groups g ON g.group_id = c.group_id
         WHERE g.operator_id = $1 AND c.namespace IN ($2, $3) AND c.key = 'credentialsId' AND c.value = $4",
        &[operator_id, &FUNNEL, &FUNK, &value],
    )?;
    for row in rows {
        let group_id = crate::ids::GroupId::new(row.text(0)?);
        let group = groups::get(db, operator_id, &group_id)?;
        check_configuration(db, operator_id, &group.configuration).map_err(|e| match e {
            StoreError::Rule(Rule::InvalidServiceConfiguration(message)) => {
                StoreError::Rule(Rule::InvalidServiceConfiguration(format!(
                    "group {group_id} would break: {message}"
                )))
            }
            other => other,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn configuration(namespace: &str, values: Value) -> Configuration {
        let mut configuration = Configuration::new();
        configuration.insert(
            namespace.to_string(),
            values.as_object().cloned().unwrap_or_default(),
        );
        configuration
    }

    fn target(namespace: &str, destination: Value) -> Result<Option<Target>, String> {
        let c = configuration(
            namespace,
            json!({"enabled": true, "destination": destination}),
        );
        route(&c, namespace).map(|r| r.map(|r| r.target))
    }

    #[test]
    fn funnel_takes_mqtt_and_http_destinations() {
        assert_eq!(
            target(
                FUNNEL,
                json!({"provider": "mqtt", "resourceUrl": "mqtt://10.0.0.1/devices/data"})
            ),
            Ok(Some(Target::Mqtt {
                tls: false,
                host: "10.0.0.1".into(),
                port: 1883,
                topic: "devices/data".into()
            }))
        );
        assert!(matches!(
            target(
                FUNNEL,
                json!({"provider": "mqtt", "resourceUrl": "mqtts://b.example:9000/t"})
            ),
            Ok(Some(Target::Mqtt {
                tls: true,
                port: 9000,
                ..
            }))
        ));
        assert!(matches!(
            target(
                FUNNEL,
                json!({"provider": "http", "resourceUrl": "https://sink.example/in"})
            ),
            Ok(Some(Target::Http { .. }))
        ));
    }

    #[test]
    fn unusable_destinations_are_refused_with_a_reason() {
        for (namespace, destination) in [
            (
                FUNNEL,
                json!({"provider": "aws", "service": "kinesis", "resourceUrl": "https://kinesis.x/s"}),
            ),
            (
                FUNNEL,
                json!({"provider": "mqtt", "resourceUrl": "mqtt://broker:1883/"}),
            ),
            (
                FUNNEL,
                json!({"provider": "mqtt", "resourceUrl": "mqtt://broker/a/#"}),
            ),
            (
                FUNNEL,
                json!({"provider": "mqtt", "resourceUrl": "http://broker/a"}),
            ),
            (
                FUNNEL,
                json!({"provider": "http", "resourceUrl": "not a url"}),
            ),
            (FUNNEL, json!({"provider": "http"})),
            (
                FUNK,
                json!({"provider": "mqtt", "resourceUrl": "mqtt://broker/a"}),
            ),
        ] {
            let answer = target(namespace, destination.clone());
            assert!(
                answer.is_err(),
                "{namespace} accepted {destination}: {answer:?}"
            );
        }
        let no_destination = configuration(FUNK, json!({"enabled": true}));
        assert!(route(&no_destination, FUNK).is_err());
    }

    #[test]
    fn a_service_is_off_unless_enabled_is_true() {
        let destination = json!({"provider": "http", "resourceUrl": "http://x/"});
        for values in [
            json!({"destination": destination}),
            json!({"enabled": false, "destination": "garbage"}),
        ] {
            assert!(matches!(
                route(&configuration(FUNK, values), FUNK),
                Ok(None)
            ));
        }
        assert!(matches!(route(&Configuration::new(), FUNNEL), Ok(None)));
        let stringly = configuration(FUNK, json!({"enabled": "yes", "destination": destination}));
        assert!(route(&stringly, FUNK).is_err());
    }

    #[test]
    fn content_type_json_requires_json() {
        let values = |content_type: Value| {
            configuration(
                FUNNEL,
                json!({"enabled": true, "contentType": content_type,
                       "destination": {"provider": "http", "resourceUrl": "http://x/"}}),
            )
        };
        let json_only = route(&values(json!("json")), FUNNEL).expect("valid");
        assert!(json_only.is_some_and(|r| r.require_json));
        let text = route(&values(json!("text")), FUNNEL).expect("valid");
        assert!(text.is_some_and(|r| !r.require_json));
        assert!(route(&values(json!("xml")), FUNNEL).is_err());
    }

    #[test]
    fn mqtt_takes_only_a_login_and_secrets_never_print() {
        let record = |kind: &str, secret: Value| CredentialsRecord {
            credentials_id: "c".into(),
            kind: kind.into(),
            description: String::new(),
            secret: secret.as_object().cloned().unwrap_or_default(),
            created_at: 0,
            updated_at: 0,
        };
        let mqtt = Target::Mqtt {
            tls: false,
            host: "b".into(),
            port: 1883,
            topic: "t".into(),
        };
        let http = Target::Http {
            url: "http://x/".into(),
        };
        let token = record("api-token-credentials", json!({"token": "s3cret"}));
        assert!(secret_for(&mqtt, &token).is_err());
        let secret = secret_for(&http, &token).expect("token for http");
        assert!(!format!("{secret:?}").contains("s3cret"));
        let login = record(
            "username-password-credentials",
            json!({"username": "u", "password": "s3cret"}),
        );
        let secret = secret_for(&mqtt, &login).expect("login for mqtt");
        assert!(!format!("{secret:?}").contains("s3cret"));
    }
}
