-- Images per label per day (the file's modification day), latest version of $label_set.
-- meter-batch query STORE --named counts_per_label_per_day --param label_set=meter-type
SELECT CAST(i.mtime AS DATE) AS day, p.label, count(*) AS images
FROM latest_predictions AS p
JOIN images AS i USING (image_id)
WHERE p.label_set = $label_set
GROUP BY ALL
ORDER BY day, p.label;
