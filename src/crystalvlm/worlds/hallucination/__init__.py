"""The hallucination world: the shapes world with the biases that make models hallucinate, and the
study of every mitigation (greedy, OPERA, VCD, HA-DPO, HA-DPO + OPERA) measured on it."""
