"""Project-wide test settings."""

import torch

# Tests run several processes (nodes, players) on two cores; one torch thread per process
# avoids oversubscription that slows every process down several times.
torch.set_num_threads(1)
