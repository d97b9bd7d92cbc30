//! Tables in: CSV or Parquet bytes → Arrow record batches with the contract's schema. Nothing
//! is inferred: the header (CSV) or the file schema (Parquet) must name the declared columns
//! in order, every value must parse as its declared type, and no row may lack its privacy
//! unit.

use std::io::Read;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use dcr_protocol::analysis::{ColumnType, Table};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("table {table}: {reason}")]
    Table { table: String, reason: String },
}

fn err(t: &Table, reason: impl Into<String>) -> LoadError {
    LoadError::Table {
        table: t.name.clone(),
        reason: reason.into(),
    }
}

pub fn data_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::String => DataType::Utf8,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
    }
}

/// The table's Arrow schema (every column nullable; the privacy unit is checked on load).
pub fn schema(t: &Table) -> SchemaRef {
    Arc::new(Schema::new(
        t.columns
            .iter()
            .map(|c| Field::new(&c.name, data_type(c.ty), true))
            .collect::<Vec<_>>(),
    ))
}

fn check_units(t: &Table, batches: &[RecordBatch]) -> Result<(), LoadError> {
    let i = t
        .columns
        .iter()
        .position(|c| c.name == t.privacy_unit)
        .expect("validated contract: the privacy unit is a column");
    let mut row = 0usize;
    for b in batches {
        let col = b.column(i);
        if col.null_count() > 0 {
            let at = (0..col.len()).find(|&r| col.is_null(r)).unwrap_or(0);
            return Err(err(
                t,
                format!(
                    "row {}: the privacy unit {} is empty (every row must name its person)",
                    row + at + 1,
                    t.privacy_unit
                ),
            ));
        }
        row += b.num_rows();
    }
    Ok(())
}

/// RFC 4180 CSV with a header line that is exactly the declared column names.
pub fn csv(t: &Table, mut data: impl Read) -> Result<Vec<RecordBatch>, LoadError> {
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes)
        .map_err(|e| err(t, format!("read: {e}")))?;
    let header_end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let header = std::str::from_utf8(&bytes[..header_end])
        .map_err(|_| err(t, "the header is not UTF-8"))?
        .trim_end_matches('\r');
    let want: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    if header.split(',').collect::<Vec<_>>() != want {
        return Err(err(
            t,
            format!(
                "the CSV header must be {:?}, found {:.200?}",
                want.join(","),
                header
            ),
        ));
    }
    let reader = datafusion::arrow::csv::ReaderBuilder::new(schema(t))
        .with_header(true)
        .with_batch_size(64 * 1024)
        .build(std::io::Cursor::new(bytes))
        .map_err(|e| err(t, e.to_string()))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(t, format!("CSV: {}", first_line(&e.to_string()))))?;
    check_units(t, &batches)?;
    Ok(batches)
}

/// Parquet whose columns are the declared ones, in order and of the declared types (strings
/// may be Utf8, LargeUtf8 or Utf8View; they are read as Utf8).
pub fn parquet(t: &Table, data: bytes::Bytes) -> Result<Vec<RecordBatch>, LoadError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let builder = ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| err(t, format!("Parquet: {}", first_line(&e.to_string()))))?;
    let file = builder.schema().clone();
    let want = schema(t);
    if file.fields().len() != want.fields().len() {
        return Err(err(
            t,
            format!(
                "the Parquet file has {} columns, the contract declares {}",
                file.fields().len(),
                want.fields().len()
            ),
        ));
    }
    for (f, w) in file.fields().iter().zip(want.fields()) {
        let same_type = f.data_type() == w.data_type()
            || (w.data_type() == &DataType::Utf8
                && matches!(f.data_type(), DataType::LargeUtf8 | DataType::Utf8View));
        if f.name() != w.name() || !same_type {
            return Err(err(
                t,
                format!(
                    "Parquet column {} {} does not match the contract's {} {}",
                    f.name(),
                    f.data_type(),
                    w.name(),
                    w.data_type()
                ),
            ));
        }
    }
    let reader = builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| err(t, format!("Parquet: {}", first_line(&e.to_string()))))?;
    let mut batches = Vec::new();
    for b in reader {
        let b = b.map_err(|e| err(t, format!("Parquet: {}", first_line(&e.to_string()))))?;
        let columns = b
            .columns()
            .iter()
            .zip(want.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    datafusion::arrow::compute::cast(c, f.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(t, e.to_string()))?;
        batches
            .push(RecordBatch::try_new(want.clone(), columns).map_err(|e| err(t, e.to_string()))?);
    }
    check_units(t, &batches)?;
    Ok(batches)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
