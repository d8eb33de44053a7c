//! The message templates (`--message-template-*`), rendered as upstream renders them: Go's
//! `fmt.Sprintf(template, nodeName)`.

/// `template` with the node name put in as Go's `fmt.Sprintf` puts in its one string argument:
/// the first `%s` or `%v` becomes the name, `%q` the name in double quotes, `%%` a single `%`;
/// a verb after the first has no argument left and becomes `%!s(MISSING)`, a verb that does not
/// format strings `%!d(string=NAME)`, and a `%` at the end `%!(NOVERB)`. One difference: a
/// template without any verb is sent as written, where Go appends `%!(EXTRA string=NAME)`.
/// Flags, widths and precisions (`%-10s`) are not interpreted: such a `%` stays as written.
pub fn render(template: &str, node: &str) -> String {
    let mut out = String::with_capacity(template.len() + node.len());
    let mut used = false;
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.clone().next() {
            None => out.push_str("%!(NOVERB)"),
            Some('%') => {
                chars.next();
                out.push('%');
            }
            Some(verb) if verb.is_ascii_alphabetic() => {
                chars.next();
                if used {
                    out.push_str(&format!("%!{verb}(MISSING)"));
                    continue;
                }
                used = true;
                match verb {
                    's' | 'v' => out.push_str(node),
                    'q' => out.push_str(&format!("{node:?}")),
                    other => out.push_str(&format!("%!{other}(string={node})")),
                }
            }
            Some(_) => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn the_name_goes_where_go_would_put_it() {
        let cases = [
            ("Draining node %s", "Draining node n1"),
            (
                "Node %s rebooted & uncordoned successfully!",
                "Node n1 rebooted & uncordoned successfully!",
            ),
            ("%v is next", "n1 is next"),
            ("node %q", "node \"n1\""),
            ("100%% of %s", "100% of n1"),
            ("%s and %s", "n1 and %!s(MISSING)"),
            ("%s: %v", "n1: %!v(MISSING)"),
            ("count %d", "count %!d(string=n1)"),
            ("ends with %", "ends with %!(NOVERB)"),
            ("%% only", "% only"),
            ("no placeholder", "no placeholder"),
            ("width %-10s kept", "width %-10s kept"),
            ("", ""),
            ("ünïcödé %s ✓", "ünïcödé n1 ✓"),
        ];
        for (template, expected) in cases {
            assert_eq!(render(template, "n1"), expected, "{template:?}");
        }
    }
}
