// A small SVG line chart: stacked panels sharing one x axis, each with its own y axis, lines
// and vertical markers. Enough for `lazymig demo --plot`; nothing to install.
#pragma once

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"

namespace lazymig::cli {

class SvgPlot {
 public:
  struct Line {
    std::string name;
    std::string color;
    std::vector<std::pair<double, double>> points;  // (x, y)
  };
  struct Panel {
    std::string title;
    double weight = 1;  // share of the chart's height
    std::vector<Line> lines;
    std::vector<std::pair<std::string, double>> markers;  // label, x
    void line(std::string name, std::string color, std::vector<std::pair<double, double>> points) {
      lines.push_back({std::move(name), std::move(color), std::move(points)});
    }
    void marker(std::string label, double x) { markers.emplace_back(std::move(label), x); }
  };

  explicit SvgPlot(std::string title) : title_(std::move(title)) {}
  // A new panel below the others; the reference stays valid.
  Panel& panel(std::string title, double weight);
  std::string render(const std::string& x_label) const;
  Status write(const std::string& path, const std::string& x_label) const;

 private:
  std::string title_;
  std::deque<Panel> panels_;
};

}  // namespace lazymig::cli
