//! The official API's pagination headers, read as a client would.

use reqwest::header::HeaderMap;

/// `x-soracom-next-key`: present only when another page follows.
pub fn next_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-soracom-next-key")
        .map(|v| v.to_str().expect("ascii next key").to_string())
}

/// The next page's URL (path and query) from the `link` header, `<url>; rel=next`.
pub fn link_next(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().expect("ascii link");
    let (url, rel) = link.split_once(';').expect("<url>; rel=next");
    assert_eq!(rel.trim(), "rel=next", "{link}");
    Some(
        url.trim()
            .strip_prefix('<')
            .and_then(|u| u.strip_suffix('>'))
            .expect("<url>")
            .to_string(),
    )
}
