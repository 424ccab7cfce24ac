//! The adapter's round trip, property-tested: random schemas (numbers, decimals, dates,
//! booleans, strings, string views, dictionaries, lists; nullable or not) and random
//! batches (with nulls, and empty ones) go through a channel's encoder and decoder, in
//! messages no larger than a random limit, and come out equal, in order.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder,
    ListBuilder, StringBuilder, StringDictionaryBuilder, StringViewBuilder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use plexus_arrow::{ChannelDecoder, ChannelEncoder};
use proptest::prelude::*;

/// The kinds of column the schemas are made of.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Int64,
    Float64,
    Decimal,
    Date,
    Boolean,
    Utf8,
    Utf8View,
    Dictionary,
    ListOfInt32,
}

const KINDS: [Kind; 9] = [
    Kind::Int64,
    Kind::Float64,
    Kind::Decimal,
    Kind::Date,
    Kind::Boolean,
    Kind::Utf8,
    Kind::Utf8View,
    Kind::Dictionary,
    Kind::ListOfInt32,
];

impl Kind {
    fn data_type(self) -> DataType {
        match self {
            Kind::Int64 => DataType::Int64,
            Kind::Float64 => DataType::Float64,
            Kind::Decimal => DataType::Decimal128(15, 2),
            Kind::Date => DataType::Date32,
            Kind::Boolean => DataType::Boolean,
            Kind::Utf8 => DataType::Utf8,
            Kind::Utf8View => DataType::Utf8View,
            Kind::Dictionary => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            Kind::ListOfInt32 => {
                DataType::List(Arc::new(Field::new("item", DataType::Int32, true)))
            }
        }
    }

    /// A column of this kind from `values` (`None`: null where the column allows it).
    fn column(self, values: &[Option<i64>], words: &[String]) -> ArrayRef {
        let word = |v: i64| words[(v.unsigned_abs() as usize) % words.len()].clone();
        match self {
            Kind::Int64 => {
                let mut b = Int64Builder::new();
                values.iter().for_each(|v| b.append_option(*v));
                Arc::new(b.finish())
            }
            Kind::Float64 => {
                let mut b = Float64Builder::new();
                values
                    .iter()
                    .for_each(|v| b.append_option(v.map(|v| v as f64 / 7.0)));
                Arc::new(b.finish())
            }
            Kind::Decimal => {
                let mut b = Decimal128Builder::new();
                values
                    .iter()
                    .for_each(|v| b.append_option(v.map(i128::from)));
                Arc::new(b.finish().with_precision_and_scale(15, 2).expect("valid"))
            }
            Kind::Date => {
                let mut b = Date32Builder::new();
                values
                    .iter()
                    .for_each(|v| b.append_option(v.map(|v| (v % 20_000) as i32)));
                Arc::new(b.finish())
            }
            Kind::Boolean => {
                let mut b = BooleanBuilder::new();
                values
                    .iter()
                    .for_each(|v| b.append_option(v.map(|v| v % 2 == 0)));
                Arc::new(b.finish())
            }
            Kind::Utf8 => {
                let mut b = StringBuilder::new();
                values.iter().for_each(|v| b.append_option(v.map(word)));
                Arc::new(b.finish())
            }
            Kind::Utf8View => {
                let mut b = StringViewBuilder::new();
                values.iter().for_each(|v| b.append_option(v.map(word)));
                Arc::new(b.finish())
            }
            Kind::Dictionary => {
                let mut b = StringDictionaryBuilder::<Int32Type>::new();
                values.iter().for_each(|v| match v {
                    Some(v) => {
                        b.append_value(word(*v));
                    }
                    None => b.append_null(),
                });
                Arc::new(b.finish())
            }
            Kind::ListOfInt32 => {
                let mut b = ListBuilder::new(Int32Builder::new());
                for v in values {
                    match v {
                        Some(v) => {
                            for i in 0..(v.unsigned_abs() % 4) {
                                b.values().append_value(i as i32);
                            }
                            b.append(true);
                        }
                        None => b.append(false),
                    }
                }
                Arc::new(b.finish())
            }
        }
    }
}

/// A schema: per column its kind and whether it may hold nulls.
fn schema_strategy() -> impl Strategy<Value = Vec<(Kind, bool)>> {
    prop::collection::vec((0..KINDS.len(), any::<bool>()), 1..6)
        .prop_map(|cols| cols.into_iter().map(|(k, n)| (KINDS[k], n)).collect())
}

/// Rows of one batch: per row, per column, a value or none.
fn batches_strategy(columns: usize) -> impl Strategy<Value = Vec<Vec<Vec<Option<i64>>>>> {
    let row = prop::collection::vec(
        prop::option::weighted(0.8, -1_000_000i64..1_000_000),
        columns,
    );
    // Some batches are empty.
    prop::collection::vec(prop::collection::vec(row, 0..300), 1..5)
}

fn build(
    columns: &[(Kind, bool)],
    rows: &[Vec<Option<i64>>],
    words: &[String],
) -> (SchemaRef, RecordBatch) {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, (kind, nullable))| Field::new(format!("c{i}"), kind.data_type(), *nullable))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .enumerate()
        .map(|(i, (kind, nullable))| {
            // A column that may not hold nulls gets a value where the row has none.
            let values: Vec<Option<i64>> = rows
                .iter()
                .map(|r| {
                    if *nullable {
                        r[i]
                    } else {
                        Some(r[i].unwrap_or(i as i64))
                    }
                })
                .collect();
            kind.column(&values, words)
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).expect("valid batch");
    (schema, batch)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn batches_come_out_as_they_went_in(
        (columns, batches) in schema_strategy()
            .prop_flat_map(|cols| { let n = cols.len(); (Just(cols), batches_strategy(n)) }),
        max_message in 4096usize..65536,
        vocabulary in 1usize..12,
    ) {
        let words: Vec<String> = (0..vocabulary).map(|i| format!("word-{i}-{}", "x".repeat(i))).collect();
        let built: Vec<(SchemaRef, RecordBatch)> =
            batches.iter().map(|rows| build(&columns, rows, &words)).collect();
        let schema = built[0].0.clone();
        let mut encoder = ChannelEncoder::new(schema.clone(), max_message);
        let mut decoder = ChannelDecoder::new();
        let mut decoded = Vec::new();
        for (_, batch) in &built {
            for message in encoder.encode(batch).expect("encodes") {
                prop_assert!(message.len() <= max_message, "{} > {max_message}", message.len());
                decoded.extend(decoder.decode(message).expect("decodes"));
            }
        }
        if let Some(end) = encoder.finish() {
            decoded.extend(decoder.decode(end).expect("decodes the end"));
        }
        decoder.finish().expect("the stream ends between messages");
        let sent: Vec<RecordBatch> = built.into_iter().map(|(_, b)| b).collect();
        let sent_rows: usize = sent.iter().map(RecordBatch::num_rows).sum();
        let got_rows: usize = decoded.iter().map(RecordBatch::num_rows).sum();
        prop_assert_eq!(got_rows, sent_rows);
        let sent_all = arrow_select::concat::concat_batches(&schema, &sent).expect("concat");
        let got_all = arrow_select::concat::concat_batches(&schema, &decoded).expect("concat");
        prop_assert_eq!(got_all, sent_all);
    }
}

#[test]
fn a_batch_larger_than_a_message_is_split_by_rows() {
    let words = vec!["w".repeat(40)];
    let rows: Vec<Vec<Option<i64>>> = (0..5_000).map(|i| vec![Some(i), Some(i)]).collect();
    let (schema, batch) = build(&[(Kind::Int64, false), (Kind::Utf8, true)], &rows, &words);
    let mut encoder = ChannelEncoder::new(schema, 16 * 1024);
    let messages = encoder.encode(&batch).expect("encodes");
    assert!(messages.len() > 10, "{} messages", messages.len());
    let mut decoder = ChannelDecoder::new();
    let mut rows_out = 0;
    for m in messages {
        assert!(m.len() <= 16 * 1024);
        rows_out += decoder
            .decode(m)
            .expect("decodes")
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>();
    }
    assert_eq!(rows_out, 5_000);
}

#[test]
fn a_row_larger_than_a_message_is_an_error_and_a_foreign_schema_too() {
    let words = vec!["w".repeat(10_000)];
    let (schema, batch) = build(&[(Kind::Utf8, false)], &[vec![Some(0)]], &words);
    let mut encoder = ChannelEncoder::new(schema, 4096);
    assert!(matches!(
        encoder.encode(&batch),
        Err(plexus_arrow::Error::TooLarge { .. })
    ));
    let (_, other) = build(&[(Kind::Int64, false)], &[vec![Some(1)]], &words);
    assert!(matches!(
        encoder.encode(&other),
        Err(plexus_arrow::Error::SchemaMismatch { .. })
    ));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let mut decoder = ChannelDecoder::new();
    let garbage =
        bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(decoder.decode(garbage).is_err());
    let mut truncated = ChannelDecoder::new();
    let _ = truncated.decode(bytes::Bytes::from_static(&[
        0xff, 0xff, 0xff, 0xff, 64, 0, 0, 0,
    ]));
    assert!(truncated.finish().is_err());
}

#[test]
fn a_batch_without_rows_comes_out_and_the_stream_ends_cleanly() {
    let words = vec!["w".to_string()];
    let kinds = [
        (Kind::Decimal, false),
        (Kind::Date, false),
        (Kind::Float64, true),
        (Kind::Utf8View, false),
    ];
    let (schema, empty) = build(&kinds, &[], &words);
    let mut encoder = ChannelEncoder::new(schema, 32 * 1024);
    let mut decoder = ChannelDecoder::new();
    let mut decoded = Vec::new();
    for m in encoder.encode(&empty).expect("encodes") {
        decoded.extend(decoder.decode(m).expect("decodes"));
    }
    let end = encoder
        .finish()
        .expect("the schema went, so the stream has an end");
    decoded.extend(decoder.decode(end).expect("decodes the end"));
    decoder.finish().expect("the stream ended between messages");
    assert_eq!(decoded.len(), 1, "the empty batch came out");
    assert_eq!(decoded[0].num_rows(), 0);
    assert_eq!(ChannelEncoder::new(empty.schema(), 1024).finish(), None);
}
