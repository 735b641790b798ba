//! Multi-row statements in the portable dialect: `INSERT … VALUES ($1, $2), ($3, $4)` and
//! `UPDATE … FROM (VALUES …) AS v` (whose columns both engines name `column1`, `column2`, …) run
//! a batch in one statement, one round trip on PostgreSQL, instead of one per row.

/// The `VALUES` rows of a multi-row statement: `rows` rows of `width` parameters numbered from
/// `$1`, e.g. `($1, $2), ($3, $4)` for 2 × 2.
pub fn values_rows(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=width)
                .map(|column| format!("${}", row * width + column))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<String>>()
        .join(", ")
}

/// `$1, $2, …, $n`: the parameters of an `IN (…)` list.
pub fn parameter_list(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Cuts `items` into chunks for multi-row statements: chunks of `max` (a power of two), then the
/// rest in decreasing powers of two. Both engines cache prepared statements by their text, so a
/// caller builds at most log2(max) + 1 different statements whatever the batch sizes it sees.
pub fn chunks<T>(items: &[T], max: usize) -> Vec<&[T]> {
    let mut found = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let size = if rest.len() >= max {
            max
        } else {
            // The largest power of two not above what is left.
            1 << (usize::BITS - 1 - rest.len().leading_zeros())
        };
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        found.push(chunk);
        rest = tail;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_rows_number_parameters_row_by_row() {
        assert_eq!(values_rows(1, 3), "($1, $2, $3)");
        assert_eq!(values_rows(2, 2), "($1, $2), ($3, $4)");
    }

    #[test]
    fn parameter_list_numbers_from_one() {
        assert_eq!(parameter_list(1), "$1");
        assert_eq!(parameter_list(3), "$1, $2, $3");
    }

    #[test]
    fn chunks_are_powers_of_two_up_to_the_maximum() {
        let items: Vec<usize> = (0..203).collect();
        let sizes: Vec<usize> = chunks(&items, 64).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [64, 64, 64, 8, 2, 1]);
        let rejoined: Vec<usize> = chunks(&items, 64).concat();
        assert_eq!(rejoined, items);
        assert!(chunks::<usize>(&[], 64).is_empty());
        assert_eq!(chunks(&items[..1], 64).len(), 1);
    }
}
