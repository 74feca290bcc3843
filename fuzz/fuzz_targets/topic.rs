//! Topic names and filters on arbitrary UTF-8: `validate_topic_name`, `validate_filter`,
//! `parse_filter` and `matches` never panic, and agree with each other.
//!
//! Input: one byte for the level limit, then the text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::router::topic::{
    level_count, matches, parse_filter, validate_filter, validate_topic_name, FilterKind,
    SHARE_PREFIX,
};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let max_levels = usize::from(limit) + 1;

    let name = validate_topic_name(text, max_levels);
    let filter = validate_filter(text, max_levels);
    let parsed = parse_filter(text, max_levels);

    if name.is_ok() {
        // A valid name is a valid filter that matches exactly itself.
        assert!(filter.is_ok(), "valid name {text:?} is not a valid filter");
        assert!(matches(text, text), "{text:?} does not match itself");
        assert!(level_count(text) <= max_levels);
    }
    match parsed {
        Ok(FilterKind::Plain(f)) => {
            assert_eq!(f, text);
            assert!(!text.starts_with(SHARE_PREFIX));
            assert!(
                filter.is_ok(),
                "parse_filter accepted what validate_filter refused"
            );
        }
        Ok(FilterKind::Shared {
            group,
            filter: inner,
        }) => {
            assert_eq!(text, format!("{SHARE_PREFIX}{group}/{inner}"));
            assert!(!group.is_empty() && !group.contains(['/', '+', '#', '\0']));
            assert!(validate_filter(inner, max_levels).is_ok());
        }
        Err(_) => {
            if !text.starts_with(SHARE_PREFIX) {
                assert!(filter.is_err(), "parse_filter refused a valid plain filter");
            }
        }
    }
    if filter.is_ok() {
        // Every valid filter can be matched against without panicking, `#` catches all
        // non-`$` topics, and `+`/`#` never match a `$` topic at the first level.
        let _ = matches(text, "a/b/c");
        if !text.starts_with('$') {
            assert!(matches("#", text) || text.contains(['+', '#']));
        }
        assert!(!matches(text, "$SYS/x") || !text.starts_with(['+', '#']));
    }
});
