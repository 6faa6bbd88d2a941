-- latest_predictions: per label-set name, only the version classified most recently
-- (reverting a file to an older version makes that one latest again), live images only.
CREATE OR REPLACE VIEW latest_predictions AS
SELECT p.*
FROM predictions AS p
JOIN (
    SELECT name, arg_max(version, classified_at) AS version
    FROM label_sets
    GROUP BY name
) AS latest ON p.label_set_version = latest.version
WHERE p.image_id IN (SELECT image_id FROM images);
