"""A parameter server: one actor holds the model, worker actors compute gradients.

The parameter-server pattern from Ray's examples, fitting a linear model with
numpy. ``ParameterServer`` keeps the weights and applies gradients;
each ``DataWorker`` keeps one shard of the data and turns weights into a
gradient. Two ways to train:

- synchronous: every step waits for one gradient from each worker. The loop
  only builds the graph: refs go straight into the next calls, and each
  actor runs its calls in submission order once their arguments are ready;
- asynchronous: ``tg.wait`` takes whichever gradient is ready first, applies
  it and hands that worker the new weights, so no worker waits for the
  slowest one.

    python examples/parameter_server.py
"""

from __future__ import annotations

import numpy as np

import taskgraph as tg

TRUE_WEIGHTS = np.array([1.0, -2.0, 3.0, 0.5, -1.0])
WORKERS = 4
LEARNING_RATE = 0.1


@tg.remote
class ParameterServer:
    def __init__(self, dim: int, learning_rate: float) -> None:
        self.weights = np.zeros(dim)
        self.learning_rate = learning_rate
        self.updates = 0

    def apply_gradients(self, *gradients: np.ndarray) -> np.ndarray:
        self.weights = self.weights - self.learning_rate * np.mean(gradients, axis=0)
        self.updates += 1
        return self.weights

    def get_weights(self) -> np.ndarray:
        return self.weights

    def num_updates(self) -> int:
        return self.updates


@tg.remote
class DataWorker:
    def __init__(self, features: np.ndarray, targets: np.ndarray) -> None:
        self.features = features
        self.targets = targets

    def compute_gradient(self, weights: np.ndarray) -> np.ndarray:
        """The gradient of the mean squared error on this worker's shard."""
        error = self.features @ weights - self.targets
        return 2 * self.features.T @ error / len(self.targets)


def make_data(rows: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, len(TRUE_WEIGHTS)))
    targets = features @ TRUE_WEIGHTS + rng.normal(scale=0.01, size=rows)
    return features, targets


def train_synchronously(workers: list, steps: int) -> np.ndarray:
    server = ParameterServer.remote(len(TRUE_WEIGHTS), LEARNING_RATE)
    weights = server.get_weights.remote()
    for _ in range(steps):
        gradients = [worker.compute_gradient.remote(weights) for worker in workers]
        weights = server.apply_gradients.remote(*gradients)
    # Nothing has waited so far: the whole run was submitted as one graph.
    result = tg.get(weights)
    print(f"synchronous: {tg.get(server.num_updates.remote())} updates")
    return result


def train_asynchronously(workers: list, updates: int) -> np.ndarray:
    server = ParameterServer.remote(len(TRUE_WEIGHTS), LEARNING_RATE)
    weights = server.get_weights.remote()
    in_flight = {worker.compute_gradient.remote(weights): worker for worker in workers}
    for _ in range(updates):
        [gradient], _ = tg.wait(list(in_flight), num_returns=1)
        worker = in_flight.pop(gradient)
        weights = server.apply_gradients.remote(gradient)
        in_flight[worker.compute_gradient.remote(weights)] = worker
    tg.wait(list(in_flight), num_returns=len(in_flight))  # let the last gradients land
    result = tg.get(server.get_weights.remote())
    print(f"asynchronous: {tg.get(server.num_updates.remote())} updates")
    return result


def main() -> None:
    tg.init(num_cpus=2)
    features, targets = make_data()
    workers = [DataWorker.remote(features[i::WORKERS], targets[i::WORKERS]) for i in range(WORKERS)]

    weights = train_synchronously(workers, steps=60)
    print(f"synchronous weights: {np.round(weights, 2)}")
    print(f"synchronous training converged: {np.allclose(weights, TRUE_WEIGHTS, atol=0.01)}")

    weights = train_asynchronously(workers, updates=200)
    print(f"asynchronous weights: {np.round(weights, 2)}")
    print(f"asynchronous training converged: {np.allclose(weights, TRUE_WEIGHTS, atol=0.01)}")

    tg.shutdown()
    print("shut down cleanly")


if __name__ == "__main__":
    main()
