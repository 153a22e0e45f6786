"""Images and records: preparing sharded TFRecords (folders, CSVs, Vertex AI import files), locating
and counting them, the tf.data pipelines training reads, labels and class weights, skipped records,
synthetic images."""
