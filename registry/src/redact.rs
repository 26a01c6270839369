//! What of an error's text the public API may show.
//!
//! Job errors and notes are served by the unauthenticated `/status` and `/jobs`, and
//! errors from the upload path can hold a presigned URL (its credentials are in the
//! query) or echo a request's headers. Before such text is stored it loses: the query
//! and fragment of every URL and any `user:password@` in it, bearer tokens, and Hub
//! tokens (`hf_...`). The full text goes to the operator's log only.

/// `text` with credentials removed (see the module docs).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_url(rest) {
        out.push_str(&rest[..at]);
        let url = &rest[at..];
        let end = url
            .find(|c: char| c.is_whitespace() || "\"'<>`)]}".contains(c))
            .unwrap_or(url.len());
        out.push_str(&clean_url(&url[..end]));
        rest = &url[end..];
    }
    out.push_str(rest);
    mask_tokens(&out)
}

fn find_url(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    match (lower.find("https://"), lower.find("http://")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A URL without user info, query or fragment (`?…` marks that a query was there).
fn clean_url(url: &str) -> String {
    let (scheme, after) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = match after.find('/') {
        Some(i) => after.split_at(i),
        None => (after, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let cut = path.find(['?', '#']);
    let path = cut.map_or(path, |i| &path[..i]);
    format!(
        "{scheme}://{host}{path}{}",
        if cut.is_some() { "?…" } else { "" }
    )
}

/// Bearer tokens and Hub tokens (`hf_` then 8 or more token characters) masked.
fn mask_tokens(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut words = s.split_inclusive(char::is_whitespace).peekable();
    while let Some(w) = words.next() {
        let word = w.trim_end();
        let space = &w[word.len()..];
        let masked = if word.eq_ignore_ascii_case("bearer") {
            out.push_str(w);
            match words.next() {
                Some(t) => {
                    let tok = t.trim_end();
                    format!("***{}", &t[tok.len()..])
                }
                None => String::new(),
            }
        } else {
            format!("{}{space}", mask_hf(word))
        };
        out.push_str(&masked);
    }
    out
}

fn mask_hf(word: &str) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(i) = rest.find("hf_") {
        let tail = &rest[i + 3..];
        let n = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(tail.len());
        out.push_str(&rest[..i]);
        if n >= 8 {
            out.push_str("hf_***");
        } else {
            out.push_str(&rest[i..i + 3 + n]);
        }
        rest = &tail[n..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_are_removed_and_the_rest_kept() {
        let e = "upload part 3 to https://bucket.s3.amazonaws.com/xet/abc?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA failed: 403";
        assert_eq!(
            redact(e),
            "upload part 3 to https://bucket.s3.amazonaws.com/xet/abc?… failed: 403"
        );
        assert_eq!(
            redact("GET http://user:pw@hub.local:8080/api/models/a/b (\"http://x/y#frag\")"),
            "GET http://hub.local:8080/api/models/a/b (\"http://x/y?…\")"
        );
        assert_eq!(
            redact(
                "sent Authorization: Bearer hf_abcdefghijkl to host; token hf_0123456789abc bad"
            ),
            "sent Authorization: Bearer *** to host; token hf_*** bad"
        );
        // Ordinary text, short hf_ words and URLs without secrets are untouched.
        for keep in [
            "the base acme/tiny cannot be read: 404 Not Found",
            "hf_x is a name; see https://huggingface.co/acme/tiny/blob/main/README.md",
            "",
        ] {
            assert_eq!(redact(keep), keep);
        }
    }
}
