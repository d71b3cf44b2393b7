//! The rules both embedded web pages keep (the update server's dashboard and the host page),
//! checked by each crate's unit tests on the files it embeds.

/// An embedded page as its server serves it.
pub struct Page<'a> {
    pub html: &'a str,
    /// The script both pages share, and where the page loads it from.
    pub common_js: &'a str,
    pub common_src: &'a str,
    /// The page's own script, and where it loads it from.
    pub app_js: &'a str,
    pub app_src: &'a str,
    pub style_href: &'a str,
}

/// What the shared script defines and a page's own script must not define again.
const SHARED: &[&str] = &[
    "function token(",
    "function api(",
    "function readJson(",
    "function showError(",
    "function clearError(",
    "function cell(",
    "function fmtTime(",
    "const $ =",
    "class ApiError",
];

/// Asserts the rules: the shared script is loaded first, then the page's own, and no other;
/// no inline script or style (the content security policy forbids them); the shared helpers
/// are defined in the shared script only; the token never goes into a URL (an `EventSource`
/// cannot send headers, so neither script uses one).
pub fn assert_page_rules(p: &Page<'_>) {
    let common = p
        .html
        .find(&format!("<script src=\"{}\"", p.common_src))
        .expect("the page loads the shared script");
    let own = p
        .html
        .find(&format!("<script src=\"{}\"", p.app_src))
        .expect("the page loads its script");
    assert!(common < own, "the shared script comes first");
    assert_eq!(p.html.matches("<script").count(), 2, "no other script");
    assert!(p.html.contains(&format!("href=\"{}\"", p.style_href)));
    assert!(!p.html.contains("<script>"), "no inline scripts (CSP)");
    assert!(!p.html.contains("style=\""), "no inline styles (CSP)");
    for shared in SHARED {
        assert!(p.common_js.contains(shared), "{shared} is shared");
        assert!(!p.app_js.contains(shared), "{shared} is defined again");
    }
    for (name, script) in [("app.js", p.app_js), ("common.js", p.common_js)] {
        assert!(
            !script.contains("new EventSource("),
            "{name}: EventSource cannot send headers"
        );
        assert!(
            !script.contains("token="),
            "{name}: the token goes in the Authorization header"
        );
    }
}
