"""automated-interpretability / TDB simulation-result schema (`dataclass_name` on every object).

Written as `explanations/<dataset>/<index>.jsonl`: one `NeuronSimulationResults` per file, on one line.
`ScoredSequenceSimulation.simulation` is the automated-interpretability name; TDB renames it on read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saescope.records import NeuronId


@dataclass
class SequenceSimulation:
    tokens: list[str]
    expected_activations: list[float]
    activation_scale: str = "simulated_normalized_activations"
    """'neuron_activations' when predictions are in the unit's own scale, else normalised 0–10."""
    distribution_values: list[list[float]] = field(default_factory=list)
    distribution_probabilities: list[list[float]] = field(default_factory=list)


@dataclass
class ScoredSequenceSimulation:
    simulation: SequenceSimulation
    true_activations: list[float]
    ev_correlation_score: float
    rsquared_score: float | None = None
    absolute_dev_explained_score: float | None = None


@dataclass
class ScoredSimulation:
    scored_sequence_simulations: list[ScoredSequenceSimulation]
    ev_correlation_score: float | None = None
    rsquared_score: float | None = None
    absolute_dev_explained_score: float | None = None


@dataclass
class ScoredExplanation:
    explanation: str
    scored_simulation: ScoredSimulation


@dataclass
class NeuronSimulationResults:
    neuron_id: NeuronId
    scored_explanations: list[ScoredExplanation]
