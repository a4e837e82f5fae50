"""`lowvram ui`: a local web app over the same options, planner, dataset scan and training as the CLI
(`pip install 'lowvram[ui]'`)."""
