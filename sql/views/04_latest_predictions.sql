-- latest_predictions: per label-set name, the predictions of its *current* version
-- (current_label_sets: the version the nightly job applied, unless a person pinned
-- another; a hand classify or an evaluate of another version moves nothing), live
-- images only.
CREATE OR REPLACE VIEW latest_predictions AS
SELECT p.*
FROM predictions AS p
JOIN current_label_sets AS c ON p.label_set_version = c.version
WHERE p.image_id IN (SELECT image_id FROM images);
