//! `GET /query/sims`: the operator's SIMs matching a filter, one page in SIM ID order. The WHERE
//! clause is assembled from typed pieces: each searchable field says where its value is found and
//! how it is compared, and every value is bound as a parameter, never written into the SQL.
//! Portable over `Db` (issue 14): text is compared case-insensitively as `lower(x) LIKE lower($n)`
//! (PostgreSQL's LIKE is case-sensitive, SQLite's is not for ASCII), and the group's name is read
//! from its JSON tags through the engine's `Db::json_text`.

use super::db::{Db, Param, Value};
use super::sims::{completed, SimRecord, SIM_COLUMNS};
use super::Result;
use crate::ids::OperatorId;

/// Filters of `GET /query/sims`. Each list holds alternatives (OR); lists combine by `match_all`.
#[derive(Debug, Default, Clone)]
pub struct SimQuery {
    pub name: Vec<String>,
    pub sim_id: Vec<String>,
    pub imsi: Vec<String>,
    pub msisdn: Vec<String>,
    pub status: Vec<String>,
    pub tag: Vec<String>,
    pub group_id: Vec<String>,
    pub subscription: Vec<String>,
    pub module_type: Vec<String>,
    pub iccid: Vec<String>,
    /// Group names (the group's `name` tag).
    pub group: Vec<String>,
    /// Filters on fields no arcd SIM has (serial number, bundles): given, they match nothing.
    pub absent_fields: bool,
    pub session_online: Option<bool>,
    /// `search_type=and` (default) or `or`.
    pub match_all: bool,
}

/// How a searched value is compared with the stored one.
#[derive(Clone, Copy)]
enum Comparison {
    Equal,
    /// The stored text contains the value, case-insensitively (`LIKE '%value%'`).
    Contains,
}

/// A searchable field: the SQL expression holding it, and, for values in another table, the
/// correlated `FROM ... WHERE` that reaches them from the SIM row `s`.
struct Field<'e> {
    related: Option<&'static str>,
    expression: &'e str,
    comparison: Comparison,
}

const SIM_TAGS: &str = "sim_tags t WHERE t.sim_id = s.sim_id";
const NAME_TAG: &str = "sim_tags t WHERE t.sim_id = s.sim_id AND t.name = 'name'";
const SUBSCRIBERS: &str = "subscribers u WHERE u.sim_id = s.sim_id";
const GROUP: &str = "groups g WHERE g.group_id = s.group_id";

const fn field<'e>(
    related: Option<&'static str>,
    expression: &'e str,
    comparison: Comparison,
) -> Field<'e> {
    Field {
        related,
        expression,
        comparison,
    }
}

impl Field<'_> {
    /// The test of one value, bound as parameter `placeholder`.
    fn test(&self, placeholder: &str) -> String {
        let comparison = match self.comparison {
            Comparison::Equal => format!("{} = {placeholder}", self.expression),
            Comparison::Contains => format!(
                "lower({}) LIKE lower({placeholder}) ESCAPE '\\'",
                self.expression
            ),
        };
        match self.related {
            Some(related) => format!("EXISTS (SELECT 1 FROM {related} AND {comparison})"),
            None => comparison,
        }
    }

    /// The parameter value that the test compares against.
    fn parameter(&self, value: &str) -> String {
        match self.comparison {
            Comparison::Equal => value.to_string(),
            Comparison::Contains => format!("%{}%", escape_like(&value.to_lowercase())),
        }
    }
}

/// The query's fields with the values asked for, in the order their clauses are written.
/// `group_name` is the SQL expression of the group's `name` tag (`Db::json_text`).
fn requested_fields<'q>(
    query: &'q SimQuery,
    group_name: &'q str,
) -> [(Field<'q>, &'q [String]); 11] {
    use Comparison::{Contains, Equal};
    [
        (field(Some(NAME_TAG), "t.value", Contains), &query.name),
        (field(None, "s.sim_id", Contains), &query.sim_id),
        (field(Some(SUBSCRIBERS), "u.imsi", Contains), &query.imsi),
        (
            field(Some(SUBSCRIBERS), "u.msisdn", Contains),
            &query.msisdn,
        ),
        (field(None, "s.status", Equal), &query.status),
        (field(Some(SIM_TAGS), "t.value", Contains), &query.tag),
        (field(None, "s.group_id", Equal), &query.group_id),
        (
            field(Some(SUBSCRIBERS), "u.subscription", Equal),
            &query.subscription,
        ),
        (field(None, "s.module_type", Equal), &query.module_type),
        (field(Some(SUBSCRIBERS), "u.iccid", Contains), &query.iccid),
        (field(Some(GROUP), group_name, Contains), &query.group),
    ]
}

/// SQL text and its parameters, numbered in the order they are bound.
#[derive(Default)]
struct BoundSql {
    parameters: Vec<Value>,
}

impl BoundSql {
    /// Binds `value` as the next parameter and returns its placeholder (`$N`).
    fn bind(&mut self, value: impl Param) -> String {
        self.parameters.push(value.to_value());
        format!("${}", self.parameters.len())
    }

    /// `(test OR test ...)` over the values, or nothing when no value is asked for.
    fn any_of(&mut self, field: &Field, values: &[String]) -> Option<String> {
        if values.is_empty() {
            return None;
        }
        let alternatives: Vec<String> = values
            .iter()
            .map(|value| field.test(&self.bind(field.parameter(value))))
            .collect();
        Some(format!("({})", alternatives.join(" OR ")))
    }

    /// `AND (clause AND|OR clause ...)` for the query's filters, empty without any.
    fn filter(&mut self, query: &SimQuery, group_name: &str) -> String {
        let mut clauses: Vec<String> = requested_fields(query, group_name)
            .iter()
            .filter_map(|(field, values)| self.any_of(field, values))
            .collect();
        if query.absent_fields {
            clauses.push("FALSE".into());
        }
        clauses.extend(session_clause(query.session_online));
        if clauses.is_empty() {
            return String::new();
        }
        let joiner = if query.match_all { " AND " } else { " OR " };
        format!("AND ({})", clauses.join(joiner))
    }
}

fn session_clause(online: Option<bool>) -> Option<String> {
    const HAS_SESSION: &str = "EXISTS (SELECT 1 FROM arc_sessions a WHERE a.sim_id = s.sim_id)";
    online.map(|online| match online {
        true => HAS_SESSION.to_string(),
        false => format!("NOT {HAS_SESSION}"),
    })
}

/// One page of the operator's SIMs that match `query`, in SIM ID order, after `after_sim_id`.
pub fn search(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    query: &SimQuery,
    after_sim_id: Option<&str>,
    limit: u32,
) -> Result<Vec<SimRecord>> {
    let mut sql = BoundSql::default();
    let operator = sql.bind(operator_id);
    let after = sql.bind(after_sim_id.unwrap_or(""));
    let filter = sql.filter(query, &db.json_text("g.tags", "name"));
    let limit = sql.bind(limit);
    let text = format!(
        "SELECT {SIM_COLUMNS} FROM sims s WHERE s.operator_id = {operator} AND s.sim_id > {after} {filter}
         ORDER BY s.sim_id LIMIT {limit}"
    );
    let parameters: Vec<&dyn Param> = sql.parameters.iter().map(|v| v as &dyn Param).collect();
    // Not cached: each combination of filters is its own statement.
    let rows = db.query_once(&text, &parameters)?;
    completed(db, &rows)
}

/// `text` with LIKE's wildcards and the escape character itself escaped, so it matches literally.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Db::json_text` answers on either engine does not matter to the SQL assembly.
    const GROUP_NAME: &str = "g_name";

    #[test]
    fn values_are_bound_in_order_and_never_written_into_the_sql() {
        let query = SimQuery {
            name: vec!["Meter_1%".into(), "pump".into()],
            status: vec!["active".into()],
            session_online: Some(false),
            match_all: true,
            ..SimQuery::default()
        };
        let mut sql = BoundSql::default();
        sql.bind("OP0000000001");
        let filter = sql.filter(&query, GROUP_NAME);
        assert_eq!(
            filter,
            "AND ((EXISTS (SELECT 1 FROM sim_tags t WHERE t.sim_id = s.sim_id AND t.name = 'name' AND lower(t.value) LIKE lower($2) ESCAPE '\\') \
             OR EXISTS (SELECT 1 FROM sim_tags t WHERE t.sim_id = s.sim_id AND t.name = 'name' AND lower(t.value) LIKE lower($3) ESCAPE '\\')) \
             AND (s.status = $4) \
             AND NOT EXISTS (SELECT 1 FROM arc_sessions a WHERE a.sim_id = s.sim_id))"
        );
        let text = |value: &str| Value::Text(value.to_string());
        assert_eq!(
            sql.parameters,
            [
                text("OP0000000001"),
                text("%meter\\_1\\%%"),
                text("%pump%"),
                text("active")
            ]
        );
    }

    #[test]
    fn alternatives_of_separate_fields_join_with_or_when_any_may_match() {
        let query = SimQuery {
            group_id: vec!["g1".into()],
            absent_fields: true,
            match_all: false,
            ..SimQuery::default()
        };
        let mut sql = BoundSql::default();
        assert_eq!(
            sql.filter(&query, GROUP_NAME),
            "AND ((s.group_id = $1) OR FALSE)"
        );
        assert_eq!(
            BoundSql::default().filter(&SimQuery::default(), GROUP_NAME),
            ""
        );
    }

    #[test]
    fn the_group_name_is_read_through_the_engines_expression() {
        let query = SimQuery {
            group: vec!["Fleet".into()],
            ..SimQuery::default()
        };
        assert_eq!(
            BoundSql::default().filter(&query, GROUP_NAME),
            "AND ((EXISTS (SELECT 1 FROM groups g WHERE g.group_id = s.group_id AND lower(g_name) LIKE lower($1) ESCAPE '\\')))"
        );
    }

    #[test]
    fn like_wildcards_match_literally() {
        assert_eq!(escape_like(r"50%_a\b"), r"50\%\_a\\b");
    }
}
