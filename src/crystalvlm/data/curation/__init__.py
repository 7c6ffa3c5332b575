"""Model-free data curation: a streaming, resumable map over JSON lines (`stream`), corpus cleaning
(`clean`) and concept-balanced subsets (`balance`). Tools that run a model build on this from
`dataengine/`."""
