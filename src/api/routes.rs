//! The `/v1` route table: every operation's method, path and handler in one list, which
//! `api::router` builds the router from and which the test below checks against
//! `openapi.yaml`'s paths, so the served API and its description cannot drift apart.

use std::sync::Arc;

use axum::handler::Handler;
use axum::middleware;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use super::{auth, auth_limit, data, groups, iot_sims, rendezvous_points, sims, vpgs, SharedState};

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

/// The routes as one router (a path listed twice serves each listed method).
pub fn into_router(routes: Vec<Route>) -> Router<SharedState> {
    routes
        .into_iter()
        .fold(Router::new(), |router, r| router.route(r.path, r.endpoint))
}

/// `POST /v1/auth`, the one operation without a token, behind its failure limiter.
pub fn sign_in(limiter: Arc<auth_limit::AuthFailureLimiter>) -> Vec<Route> {
    let mut sign_in = route(Verb::Post, "/auth", auth::auth);
    sign_in.endpoint = sign_in.endpoint.layer(middleware::from_fn_with_state(
        limiter,
        auth_limit::limit_failures,
    ));
    vec![sign_in]
}

/// Every operation that needs a valid token (`auth::require_token`).
pub fn authenticated() -> Vec<Route> {
    use Verb::{Delete, Get, Post, Put};
    let mut routes = vec![
        route(
            Post,
            "/operators/{operator_id}/auth_keys",
            auth::generate_auth_key,
        ),
        route(
            Get,
            "/operators/{operator_id}/auth_keys",
            auth::list_auth_keys,
        ),
        route(
            Delete,
            "/operators/{operator_id}/auth_keys/{auth_key_id}",
            auth::delete_auth_key,
        ),
        route(Post, "/auth/logout", auth::logout),
        route(Post, "/sims", sims::create_sim),
        route(Get, "/sims", sims::list_sims),
        route(Get, "/query/sims", sims::search_sims),
        route(Get, "/sims/{sim_id}", sims::get_sim),
        route(
            Post,
            "/sims/{sim_id}/sessions/arc",
            sims::create_arc_session,
        ),
        route(
            Put,
            "/sims/{sim_id}/credentials/arc",
            sims::renew_credentials,
        ),
        // attachArcCredentials: deprecated in the official API; renews, so an old key never
        // keeps working.
        route(
            Post,
            "/sims/{sim_id}/credentials/arc",
            sims::renew_credentials,
        ),
        route(
            Delete,
            "/sims/{sim_id}/credentials/arc",
            sims::remove_credentials,
        ),
        route(Post, "/sims/{sim_id}/delete_session", sims::delete_session),
        route(Post, "/sims/{sim_id}/terminate", sims::terminate),
        route(
            Post,
            "/sims/{sim_id}/enable_termination",
            sims::enable_termination,
        ),
        route(
            Post,
            "/sims/{sim_id}/disable_termination",
            sims::disable_termination,
        ),
        route(Post, "/sims/{sim_id}/activate", sims::activate),
        route(Post, "/sims/{sim_id}/deactivate", sims::deactivate),
        route(Post, "/sims/{sim_id}/suspend", sims::suspend),
        route(Post, "/sims/{sim_id}/set_group", sims::set_group),
        route(Post, "/sims/{sim_id}/unset_group", sims::unset_group),
        route(Put, "/sims/{sim_id}/tags", sims::put_tags),
        route(Delete, "/sims/{sim_id}/tags/{tag_name}", sims::delete_tag),
        route(
            Get,
            "/sims/{sim_id}/events/sessions",
            sims::list_session_events,
        ),
        route(
            Post,
            "/sims/{sim_id}/profiles/{iccid}/add_subscription",
            sims::add_subscription,
        ),
        route(
            Post,
            "/sims/{sim_id}/profiles/{iccid}/subscribers/{imsi}/terminate",
            sims::terminate_subscription,
        ),
        route(Post, "/groups", groups::create),
        route(Get, "/groups", groups::list),
        route(Get, "/groups/{group_id}", groups::get),
        route(Delete, "/groups/{group_id}", groups::delete),
        route(
            Put,
            "/groups/{group_id}/configuration/{namespace}",
            groups::put_configuration,
        ),
        route(
            Delete,
            "/groups/{group_id}/configuration/{namespace}/{name}",
            groups::delete_configuration,
        ),
        route(
            Get,
            "/groups/{group_id}/subscribers",
            groups::list_subscribers,
        ),
        route(Post, "/virtual_private_gateways", vpgs::create),
        route(Get, "/virtual_private_gateways", vpgs::list),
        route(Get, "/virtual_private_gateways/{vpg_id}", vpgs::get),
        route(
            Post,
            "/virtual_private_gateways/{vpg_id}/terminate",
            vpgs::terminate,
        ),
        route(
            Put,
            "/arcd/virtual_private_gateways/{vpg_id}/device_to_device",
            vpgs::set_device_to_device,
        ),
        route(Post, "/arcd/iot_sims", iot_sims::import_iot_sims),
        route(Get, "/arcd/rendezvous_points", rendezvous_points::list),
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
