-- Images whose label differs between two label-set versions ($old_version, $new_version).
-- meter-batch query STORE --named label_changes --param old_version=... --param new_version=...
SELECT
    a.image_id, i.path, a.label AS old_label, b.label AS new_label,
    a.prob AS old_prob, b.prob AS new_prob
FROM predictions AS a
JOIN predictions AS b USING (image_id)
JOIN images AS i USING (image_id)
WHERE a.label_set_version = $old_version
  AND b.label_set_version = $new_version
  AND a.label <> b.label
ORDER BY a.image_id;
