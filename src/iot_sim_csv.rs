//! The file `arcd iotsim import` reads: a CSV with the header `iccid,imsi,msisdn,subscription`
//! and one IoT SIM per row, each row deserialized into the store's [`IotSimImport`]. Errors name
//! the file and the line, so an operator can fix a file of thousands of rows.

use std::io;
use std::path::Path;

use crate::store::subscriptions::IotSimImport;

/// The one header the file must start with, in this order (fields are trimmed).
pub const CSV_HEADER: [&str; 4] = ["iccid", "imsi", "msisdn", "subscription"];

/// Why the file cannot be imported, with the line where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct CsvError {
    pub file: String,
    pub message: String,
}

/// Reads the file; each item comes with the line it started on, for later error messages.
pub fn read(file: &Path) -> Result<Vec<(u64, IotSimImport)>, CsvError> {
    let name = file.display().to_string();
    let reader = reader_builder().from_path(file).map_err(|e| CsvError {
        file: name.clone(),
        message: e.to_string(),
    })?;
    parse(reader).map_err(|message| CsvError {
        file: name,
        message,
    })
}

fn reader_builder() -> csv::ReaderBuilder {
    let mut builder = csv::ReaderBuilder::new();
    builder.trim(csv::Trim::All);
    builder
}

/// The rows of an opened file, checked one by one (`IotSimImport::check`); the error is the
/// message without the file name.
fn parse<R: io::Read>(mut reader: csv::Reader<R>) -> Result<Vec<(u64, IotSimImport)>, String> {
    let header = reader
        .headers()
        .map_err(|e| format!("line 1: {e}"))?
        .clone();
    if header.iter().ne(CSV_HEADER) {
        return Err(format!(
            "line 1: header must be `{}`, found `{}`",
            CSV_HEADER.join(","),
            header.iter().collect::<Vec<_>>().join(",")
        ));
    }
    let mut items = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| at_line(e.position(), &e))?;
        let item: IotSimImport = record
            .deserialize(Some(&header))
            .map_err(|e| at_line(record.position(), &e))?;
        let line = record.position().map_or(0, csv::Position::line);
        item.check().map_err(|m| format!("line {line}: {m}"))?;
        items.push((line, item));
    }
    if items.is_empty() {
        return Err("no rows after the header".into());
    }
    Ok(items)
}

fn at_line(position: Option<&csv::Position>, error: impl std::fmt::Display) -> String {
    format!("line {}: {error}", position.map_or(0, csv::Position::line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Vec<(u64, IotSimImport)>, String> {
        parse(reader_builder().from_reader(text.as_bytes()))
    }

    const HEADER: &str = "iccid,imsi,msisdn,subscription\n";

    #[test]
    fn good_file_gives_each_row_with_its_line() {
        let text = format!(
            "{HEADER}8981200000000000001,440200000000001,818000000001,plan-D\n \
             8981200000000000002 , 440200000000002 ,  , plan-K \n"
        );
        let items = parse_text(&text).expect("parses");
        assert_eq!(items.len(), 2);
        let (line, first) = &items[0];
        assert_eq!(*line, 2);
        assert_eq!(first.iccid, "8981200000000000001");
        assert_eq!(first.imsi, "440200000000001");
        assert_eq!(first.msisdn.as_deref(), Some("818000000001"));
        assert_eq!(first.subscription, "plan-D");
        let (line, second) = &items[1];
        assert_eq!(*line, 3);
        assert_eq!(second.iccid, "8981200000000000002");
        assert_eq!(second.msisdn, None, "a blank msisdn is none");
        assert_eq!(second.subscription, "plan-K");
    }

    #[test]
    fn missing_column_is_refused_at_the_header() {
        let error =
            parse_text("iccid,imsi,subscription\n8981200000000000001,440200000000001,plan-D\n")
                .expect_err("refused");
        assert_eq!(
            error,
            "line 1: header must be `iccid,imsi,msisdn,subscription`, found `iccid,imsi,subscription`"
        );
    }

    #[test]
    fn row_missing_a_field_names_its_line() {
        let text = format!(
            "{HEADER}8981200000000000001,440200000000001,,plan-D\n\
             8981200000000000002,440200000000002,plan-D\n"
        );
        let error = parse_text(&text).expect_err("refused");
        assert!(error.starts_with("line 3: "), "{error}");
        assert!(error.contains("found record with 3 fields"), "{error}");
    }

    #[test]
    fn bad_imsi_names_its_line() {
        let text = format!(
            "{HEADER}8981200000000000001,440200000000001,,plan-D\n\
             8981200000000000002,440200000000002,,plan-D\n\
             8981200000000000003,4402000000,,plan-D\n"
        );
        assert_eq!(
            parse_text(&text).expect_err("refused"),
            "line 4: imsi `4402000000` must be 14 or 15 digits"
        );
    }

    #[test]
    fn empty_file_and_header_only_are_refused() {
        assert_eq!(
            parse_text("").expect_err("refused"),
            "line 1: header must be `iccid,imsi,msisdn,subscription`, found ``"
        );
        assert_eq!(
            parse_text(HEADER).expect_err("refused"),
            "no rows after the header"
        );
    }

    #[test]
    fn unreadable_file_is_named() {
        let error = read(Path::new("/nonexistent/arcd-test/sims.csv")).expect_err("refused");
        assert_eq!(error.file, "/nonexistent/arcd-test/sims.csv");
        assert!(
            error
                .to_string()
                .starts_with("/nonexistent/arcd-test/sims.csv: "),
            "{error}"
        );
    }
}
