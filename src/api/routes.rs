//! The `/v1` route table: every operation's method, path and handler in one list, which
//! `api::router` builds the router from and which the test below checks against
//! `openapi.yaml`'s paths, so the served API and its description cannot drift apart.

use std::sync::Arc;

use axum::handler::Handler;
use axum::middleware;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use super::{
    auth, auth_limit, credentials, data, endorse, groups, iot_sims, rendezvous_points, sim_counts,
    sims, vpgs, SharedState,
};

/// The HTTP methods the API routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
            Verb::Delete => MethodFilter::DELETE,
        }
    }

    /// The method's name in lower case, as `openapi.yaml` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Delete => "delete",
        }
    }
}

/// One operation: `verb` on `path` (under `/v1`) runs `endpoint`.
pub struct Route {
    pub verb: Verb,
    pub path: &'static str,
    endpoint: MethodRouter<SharedState>,
}

/// A route whose method filter is made from `verb`, so the table cannot list one method and
/// serve another.
pub fn route<H, T>(verb: Verb, path: &'static str, handler: H) -> Route
where
    H: Handler<T, SharedState>,
    T: 'static,
{
    Route {
        verb,
        path,
        endpoint: on(verb.filter(), handler),
    }
}

pub fn get<H: Handler<T, SharedState>, T: 'static>(path: &'static str, handler: H) -> Route {
    route(Verb::Get, path, handler)
}

pub fn post<H: Handler<T, SharedState>, T: 'static>(path: &'static str, handler: H) -> Route {
    route(Verb::Post, path, handler)
}

pub fn put<H: Handler<T, SharedState>, T: 'static>(path: &'static str, handler: H) -> Route {
    route(Verb::Put, path, handler)
}

pub fn delete<H: Handler<T, SharedState>, T: 'static>(path: &'static str, handler: H) -> Route {
    route(Verb::Delete, path, handler)
}

/// The routes as one router (a path listed twice serves each listed method).
pub fn into_router(routes: Vec<Route>) -> Router<SharedState> {
    routes
        .into_iter()
        .fold(Router::new(), |router, r| router.route(r.path, r.endpoint))
}

/// `POST /v1/auth`, the one operation without a token, behind its failure limiter.
pub fn sign_in(limiter: Arc<auth_limit::AuthFailureLimiter>) -> Vec<Route> {
    let mut sign_in = post("/auth", auth::auth);
    sign_in.endpoint = sign_in.endpoint.layer(middleware::from_fn_with_state(
        limiter,
        auth_limit::limit_failures,
    ));
    vec![sign_in]
}

/// Operations anyone may call: public keys, which a backend verifying Endorse tokens fetches
/// without an account.
pub fn public() -> Vec<Route> {
    vec![get("/arcd/endorse/jwks", endorse::jwks)]
}

/// Every operation that needs a valid token (`auth::require_token`). One operation per line, as a
/// table (hence no rustfmt).
#[rustfmt::skip]
pub fn authenticated() -> Vec<Route> {
    let mut routes = vec![
        post("/operators/{operator_id}/auth_keys", auth::generate_auth_key),
        get("/operators/{operator_id}/auth_keys", auth::list_auth_keys),
        delete("/operators/{operator_id}/auth_keys/{auth_key_id}", auth::delete_auth_key),
        post("/auth/logout", auth::logout),
        post("/sims", sims::create_sim),
        get("/sims", sims::list_sims),
        get("/query/sims", sims::search_sims),
        get("/sims/{sim_id}", sims::get_sim),
        post("/sims/{sim_id}/sessions/arc", sims::create_arc_session),
        put("/sims/{sim_id}/credentials/arc", sims::renew_credentials),
        // attachArcCredentials: deprecated in the official API; renews, so an old key never
        // keeps working.
        post("/sims/{sim_id}/credentials/arc", sims::renew_credentials),
        delete("/sims/{sim_id}/credentials/arc", sims::remove_credentials),
        post("/sims/{sim_id}/delete_session", sims::delete_session),
        post("/sims/{sim_id}/terminate", sims::terminate),
        post("/sims/{sim_id}/enable_termination", sims::enable_termination),
        post("/sims/{sim_id}/disable_termination", sims::disable_termination),
        post("/sims/{sim_id}/activate", sims::activate),
        post("/sims/{sim_id}/deactivate", sims::deactivate),
        post("/sims/{sim_id}/suspend", sims::suspend),
        post("/sims/{sim_id}/set_group", sims::set_group),
        post("/sims/{sim_id}/unset_group", sims::unset_group),
        put("/sims/{sim_id}/tags", sims::put_tags),
        delete("/sims/{sim_id}/tags/{tag_name}", sims::delete_tag),
        get("/sims/{sim_id}/events/sessions", sims::list_session_events),
        post("/sims/{sim_id}/profiles/{iccid}/add_subscription", sims::add_subscription),
        post("/sims/{sim_id}/profiles/{iccid}/subscribers/{imsi}/terminate", sims::terminate_subscription),
        post("/groups", groups::create),
        get("/groups", groups::list),
        get("/groups/{group_id}", groups::get),
        delete("/groups/{group_id}", groups::delete),
        put("/groups/{group_id}/configuration/{namespace}", groups::put_configuration),
        delete("/groups/{group_id}/configuration/{namespace}/{name}", groups::delete_configuration),
        get("/groups/{group_id}/subscribers", groups::list_subscribers),
        post("/virtual_private_gateways", vpgs::create),
        get("/virtual_private_gateways", vpgs::list),
        get("/virtual_private_gateways/{vpg_id}", vpgs::get),
        post("/virtual_private_gateways/{vpg_id}/terminate", vpgs::terminate),
        put("/arcd/virtual_private_gateways/{vpg_id}/device_to_device", vpgs::set_device_to_device),
        post("/arcd/iot_sims", iot_sims::import_iot_sims),
        get("/arcd/rendezvous_points", rendezvous_points::list),
        get("/arcd/sim_counts", sim_counts::get),
        get("/credentials", credentials::list),
        post("/credentials/{credentials_id}", credentials::create),
        put("/credentials/{credentials_id}", credentials::update),
        delete("/credentials/{credentials_id}", credentials::delete),
    ];
    routes.extend(data::routes());
    routes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// (method, path) of every operation `openapi.yaml` describes.
    fn documented() -> BTreeSet<(String, String)> {
        let document: serde_yaml::Value =
            serde_yaml::from_str(super::super::OPENAPI).expect("openapi.yaml parses");
        let paths = document["paths"].as_mapping().expect("paths");
        let mut operations = BTreeSet::new();
        for (path, item) in paths {
            let path = path.as_str().expect("path is a string");
            for (key, _) in item.as_mapping().expect("path item") {
                let key = key.as_str().expect("key is a string");
                if [
                    "get", "put", "post", "delete", "patch", "head", "options", "trace",
                ]
                .contains(&key)
                {
                    operations.insert((key.to_string(), path.to_string()));
                }
            }
        }
        operations
    }

    fn routed() -> BTreeSet<(String, String)> {
        super::super::operations()
            .into_iter()
            .map(|(method, path)| (method.to_string(), path.to_string()))
            .collect()
    }

    #[test]
    fn the_router_serves_exactly_the_documented_operations() {
        let (documented, routed) = (documented(), routed());
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.yaml: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "openapi.yaml operations with no route: {unrouted:?}"
        );
    }
}
