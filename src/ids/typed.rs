//! Typed identities: one newtype per kind of id, so that no function can take a SIM id where an
//! operator id belongs (docs/ARCHITECTURE.md, "Identities and formats"). They hold the text as
//! stored and sent on the wire; they do not validate: formats are checked where input enters (the
//! API's path, query and body readers, the CSV import, config validation), and each of those keeps
//! its own error answer.

/// Defines a string newtype with the conversions every id needs: serde as a bare string (the JSON
/// does not change), an SQLite column both ways, `Display`, `as_str`, and `Borrow<str>` so maps
/// keyed by it can be queried with a `&str`. Deliberately no `Deref<Target = str>`: that would let
/// a `&SimId` pass where a `&str` of another kind of id is taken, which is what the types prevent.
/// Modelled on firezone's `make_id!`.
macro_rules! make_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(text: impl Into<String>) -> Self {
                Self(text.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// Explicit construction from text (`"…".into()`); there is no conversion back to a bare
        /// `&str` other than `as_str`, so a typed parameter never accepts another kind of id.
        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self(text.to_string())
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                Self(text)
            }
        }

        impl std::borrow::Borrow<str> for $name {

            fn borrow(&self) -> &str {
                &self.0
            }
        }

        /// Comparing with text reads well in tests and checks; it cannot swap two kinds of id.
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<&str> for $name {

            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                **self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl rusqlite::types::ToSql for $name {

            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        /// A `$N` parameter of the store's portable SQL (crate::store::db).
        impl crate::store::db::Param for $name {
            fn to_value(&self) -> crate::store::db::Value {
                crate::store::db::Value::Text(self.0.clone())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                String::column_result(value).map(Self)
            }
        }
    };
}

make_id!(
    /// An operator (tenant): `OP` + 10 digits.
    OperatorId
);
make_id!(
    /// A SIM: the id SORACOM's API calls `simId` (a 19-digit ICCID for the SIMs arcd issues and
    /// imports).
    SimId
);
make_id!(
    /// A subscriber's 15-digit IMSI: a virtual subscriber's `99999…` or an imported IoT SIM's.
    Imsi
);
make_id!(
    /// A group (UUID).
    GroupId
);
make_id!(
    /// A virtual private gateway (UUID).
    VpgId
);
make_id!(
    /// A rendezvous point, named by its placement region, e.g. `ap-northeast-1`.
    RendezvousPointId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bare_strings_on_the_wire_and_in_sqlite() {
        let sim = SimId::new("8942310000000000018");
        assert_eq!(
            serde_json::to_string(&sim).unwrap(),
            "\"8942310000000000018\""
        );
        let back: SimId = serde_json::from_str("\"8942310000000000018\"").unwrap();
        assert_eq!(back, sim);

        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let read: Imsi = conn
            .query_row("SELECT ?1", [Imsi::new("999990000000007")], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(read, "999990000000007");
        assert_eq!(read.to_string(), "999990000000007");
    }

    #[test]
    fn maps_keyed_by_an_id_answer_a_str() {
        let mut map = std::collections::HashMap::new();
        map.insert(VpgId::new("v-1"), 1);
        assert_eq!(map.get("v-1"), Some(&1));
    }
}
