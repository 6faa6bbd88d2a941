from meter_batch.cli import main

raise SystemExit(main())
