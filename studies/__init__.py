"""Multi-objective Optuna studies: storage, samplers, constraints, Ray execution, resume."""
