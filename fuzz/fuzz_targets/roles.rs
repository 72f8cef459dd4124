//! Role data: `servant::checks::role::parse_roles(key, body)` and the roles it names.

#![no_main]

use libfuzzer_sys::fuzz_target;
use servant::checks::role::{parse_roles, role_of, Role, RoleError};

const KEY: &str = "cluster/prod/web";

fuzz_target!(|data: &[u8]| {
    let Ok(Some(r)) = parse_roles(KEY, Some(data)) else {
        return;
    };
    // Every listed name gets the role its list says, or the "in both lists" error.
    for (names, role) in [(&r.active, Role::Primary), (&r.standby, Role::Secondary)] {
        for n in names {
            match role_of(Some(&r), n, n, KEY) {
                Ok(got) => assert_eq!(got, role),
                Err(RoleError::Both { .. }) => {
                    assert!(r.active.contains(n) && r.standby.contains(n))
                }
                Err(e) => panic!("{n:?} is listed but got {e}"),
            }
        }
    }
});
