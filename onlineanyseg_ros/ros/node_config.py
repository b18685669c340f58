"""Configs of the two nodes (frozen, validated; declared as ROS parameters by ros/params.py)."""

from dataclasses import dataclass

from onlineanyseg_ros.core.config import spec, validate_config


@dataclass(frozen=True)
class PerceptionNodeConfig:
    """Parameters of the perception node (frame sync, pose, keyframes, 2D models)."""

    world_frame: str = spec('map', 'Fixed frame of the map; poses are T_world_camera.')
    pose_source: str = spec('tf', 'Where camera poses come from: tf (world_frame <- the depth '
                            'image frame) or topic (camera_pose PoseStamped).',
                            choices=('tf', 'topic'))
    input_qos: str = spec('reliable', 'QoS of the image inputs: reliable (keep last) or '
                          'sensor_data (best effort, for best-effort drivers).',
                          choices=('reliable', 'sensor_data'))
    queue_size: int = spec(30, 'Colour/depth frames buffered while waiting for a pose; the '
                           'oldest is dropped (and counted) when full.', 1, 10000)
    sync_tolerance_ms: float = spec(20.0, 'Largest colour/depth stamp difference that still '
                                    'pairs them.', 0.0, 1000.0)
    pose_timeout_s: float = spec(1.0, 'A frame whose pose is still unknown after this long is '
                                 'dropped (and counted).', 0.0, 60.0)
    process_rate_hz: float = spec(30.0, 'Rate of the timer that processes ready frames.',
                                  0.1, 1000.0)
    keyframe_every_n_frames: int = spec(10, 'A frame becomes a keyframe after this many frames '
                                        'since the last keyframe (0 = only motion decides).',
                                        0, 100000)
    keyframe_min_translation_m: float = spec(0.0, 'A frame that moved at least this far from '
                                             'the last keyframe is a keyframe (0 = off).',
                                             0.0, 100.0)
    keyframe_min_rotation_deg: float = spec(0.0, 'A frame that turned at least this much from '
                                            'the last keyframe is a keyframe (0 = off).',
                                            0.0, 180.0)
    depth_scale: float = spec(0.001, 'Metres per unit of 16UC1 depth images.', 1e-6, 1.0)
    mask_generator: str = spec('geometric', 'Mask generator: geometric (weight-free) or '
                               'cropformer (needs detectron2 and a checkpoint).',
                               choices=('geometric', 'cropformer'))
    cropformer_config_file: str = spec('', 'CropFormer/Mask2Former config file (cropformer).')
    cropformer_checkpoint: str = spec('', 'CropFormer checkpoint file (cropformer).')
    clip_checkpoint: str = spec('', 'open_clip ViT-H-14 checkpoint file; empty = look in the '
                                'Hugging Face cache; none found = semantic features off.')
    device: str = spec('cpu', 'Torch device of the 2D models (cpu, cuda, cuda:1, ...).')

    def __post_init__(self) -> None:
        """Validate every field and the keyframe rule."""
        validate_config(self)
        if (self.keyframe_every_n_frames == 0 and self.keyframe_min_translation_m == 0.0
                and self.keyframe_min_rotation_deg == 0.0):
            raise ValueError('PerceptionNodeConfig.keyframe_every_n_frames: no keyframe rule '
                             'is active (all of every_n, translation and rotation are 0)')


@dataclass(frozen=True)
class SegmentationNodeConfig:
    """Parameters of the segmentation node (bundle join, device, publishing, services)."""

    profile: str = spec('default', 'Method profile: default (this project) or reference '
                        '(published thresholds and behaviour); segmenter.* override it.',
                        choices=('default', 'reference'))
    device: str = spec('cpu', 'Torch device of the map (cpu, cuda, cuda:1, ...).')
    bundle_queue_size: int = spec(10, 'Incomplete keyframe bundles kept while waiting for '
                                  'their parts.', 1, 1000)
    bundle_timeout_s: float = spec(5.0, 'An incomplete keyframe bundle older than this is '
                                   'dropped (and counted).', 0.1, 600.0)
    publish_rate_hz: float = spec(1.0, 'Rate of the instance cloud and marker updates.',
                                  0.01, 100.0)
    output_dir: str = spec('onlineanyseg_map', 'Directory save_map writes into.')
    reset_on_time_jump: bool = spec(False, 'Reset the map when time jumps backwards (bag '
                                    'loop); otherwise warn and keep it.')
    query_top_k: int = spec(5, 'Instances returned by a text query.', 1, 1000)
    clip_checkpoint: str = spec('', 'open_clip ViT-H-14 checkpoint for text queries; empty = '
                                'Hugging Face cache; none found = queries answer empty.')

    def __post_init__(self) -> None:
        """Validate every field."""
        validate_config(self)
