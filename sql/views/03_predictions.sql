-- predictions: every committed prediction of every label-set version (old versions stay).
CREATE OR REPLACE VIEW predictions AS
SELECT
    image_id,
    label_set,
    label_set_version,
    label,
    prob,
    margin,
    abstained,
    top_labels,
    top_probs,
    logit_scale
FROM read_parquet({{prediction_files}});
