//! `application/x-www-form-urlencoded` text: HTML form bodies (the balancer-manager's) and
//! query strings.

/// The decoded `name=value` pairs of `text`, in order. Empty pieces are skipped; a piece
/// without `=` is a name with an empty value.
pub fn pairs(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(name), percent_decode(value))
    })
}

/// `%XX` escapes and `+` for space. A `%` not followed by two hex digits stays as it is;
/// bytes that are not UTF-8 become U+FFFD.
pub fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'+' => Some((b' ', 1)),
            b'%' if i + 2 < bytes.len() => hex(bytes[i + 1])
                .zip(hex(bytes[i + 2]))
                .map(|(h, l)| (h << 4 | l, 3)),
            _ => None,
        };
        let (byte, width) = decoded.unwrap_or((bytes[i], 1));
        out.push(byte);
        i += width;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_plus_are_decoded_and_stray_percents_kept() {
        assert_eq!(percent_decode("a%2Fb+c%"), "a/b c%");
        assert_eq!(
            percent_decode("metadata.name%3Droutemap"),
            "metadata.name=routemap"
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn pairs_come_in_order_with_empty_values_for_bare_names() {
        let got: Vec<(String, String)> = pairs("&a=1&b&c=x%20y&").collect();
        let want = [("a", "1"), ("b", ""), ("c", "x y")];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }
}
