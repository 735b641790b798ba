//! `//v1/auth` is `/v1/auth`: SORACOM clients build URLs as endpoint + path, so an endpoint
//! configured with a trailing slash (`https://api.soracom.io/`, as soratun allows) sends a request
//! target with two leading slashes. The official API answers those like the single-slash path;
//! arcd folds any run of leading slashes into one before routing so such clients work unchanged.

use axum::http::uri::{PathAndQuery, Uri};

/// Rewrites `uri` in place when its path starts with more than one `/`; everything after the
/// leading run (inner `//`, the query) is kept as sent.
pub(crate) fn fold(uri: &mut Uri) {
    let Some(path_and_query) = uri.path_and_query() else {
        return;
    };
    let text = path_and_query.as_str();
    if !text.starts_with("//") {
        return;
    }
    let folded = format!("/{}", text.trim_start_matches('/'));
    let Ok(folded) = PathAndQuery::try_from(folded) else {
        return;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(folded);
    if let Ok(rewritten) = Uri::from_parts(parts) {
        *uri = rewritten;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(text: &str) -> String {
        let mut uri: Uri = text.parse().expect("valid URI");
        fold(&mut uri);
        uri.to_string()
    }

    #[test]
    fn leading_runs_of_slashes_become_one() {
        assert_eq!(folded("//v1/auth"), "/v1/auth");
        assert_eq!(folded("///v1/sims?limit=1"), "/v1/sims?limit=1");
        assert_eq!(
            folded("https://api.soracom.io//v1/auth"),
            "https://api.soracom.io/v1/auth"
        );
    }

    #[test]
    fn other_paths_are_left_alone() {
        assert_eq!(folded("/v1/auth"), "/v1/auth");
        assert_eq!(folded("/v1//sims"), "/v1//sims");
        assert_eq!(folded("/"), "/");
        assert_eq!(folded("/openapi.yaml?x=//y"), "/openapi.yaml?x=//y");
    }
}
