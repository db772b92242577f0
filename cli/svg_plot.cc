#include "cli/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace lazymig::cli {
namespace {

constexpr double kWidth = 960, kLeft = 70, kRight = 170, kTop = 40, kPlotHeight = 560;
constexpr double kGap = 36, kBottom = 50;

// A round tick step giving about `ticks` ticks up to `max`.
double niceStep(double max, int ticks) {
  if (max <= 0) return 1;
  const double raw = max / ticks;
  const double mag = std::pow(10, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (raw <= m * mag) return m * mag;
  }
  return 10 * mag;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

std::string label(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", std::round(v * 1000) / 1000);
  return b;
}

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else
      out += c;
  }
  return out;
}

}  // namespace

SvgPlot::Panel& SvgPlot::panel(std::string title, double weight) {
  panels_.push_back(Panel{std::move(title), weight, {}, {}});
  return panels_.back();
}

std::string SvgPlot::render(const std::string& x_label) const {
  double x_max = 0, weights = 0;
  for (const auto& p : panels_) {
    weights += p.weight;
    for (const auto& l : p.lines)
      for (auto [x, y] : l.points) x_max = std::max(x_max, x);
    for (const auto& m : p.markers) x_max = std::max(x_max, m.second);
  }
  const double x_step = niceStep(x_max, 10);
  x_max = std::max(x_step, std::ceil(x_max / x_step) * x_step);
  const double plot_w = kWidth - kLeft - kRight;
  const double usable = kPlotHeight - kGap * static_cast<double>(panels_.size() - 1);
  const double height = kTop + kPlotHeight + kBottom;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << height
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << kWidth / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">"
    << escape(title_) << "</text>\n";
  auto sx = [&](double x) { return kLeft + x / x_max * plot_w; };
  double top = kTop;
  for (const auto& p : panels_) {
    const double h = usable * p.weight / weights;
    double y_max = 0;
    for (const auto& l : p.lines)
      for (auto [x, y] : l.points) y_max = std::max(y_max, y);
    const double y_step = niceStep(y_max * 1.05, 4);
    y_max = std::max(y_step, std::ceil(y_max * 1.05 / y_step) * y_step);
    auto sy = [&](double y) { return top + h - y / y_max * h; };
    s << "<text x=\"" << kLeft << "\" y=\"" << top - 6 << "\" font-weight=\"bold\">"
      << escape(p.title) << "</text>\n";
    for (double y = 0; y <= y_max + 1e-9; y += y_step) {
      s << "<line x1=\"" << kLeft << "\" x2=\"" << kLeft + plot_w << "\" y1=\"" << num(sy(y))
        << "\" y2=\"" << num(sy(y)) << "\" stroke=\"#e5e5e5\"/>\n"
        << "<text x=\"" << kLeft - 6 << "\" y=\"" << num(sy(y) + 4) << "\" text-anchor=\"end\">"
        << label(y) << "</text>\n";
    }
    for (double x = 0; x <= x_max + 1e-9; x += x_step) {
      s << "<line x1=\"" << num(sx(x)) << "\" x2=\"" << num(sx(x)) << "\" y1=\"" << top
        << "\" y2=\"" << top + h << "\" stroke=\"#f0f0f0\"/>\n";
    }
    s << "<rect x=\"" << kLeft << "\" y=\"" << top << "\" width=\"" << plot_w << "\" height=\"" << h
      << "\" fill=\"none\" stroke=\"#333\"/>\n";
    double legend_y = top + 14;
    for (const auto& l : p.lines) {
      s << "<polyline fill=\"none\" stroke=\"" << l.color << "\" stroke-width=\"1.6\" points=\"";
      for (auto [x, y] : l.points) s << num(sx(x)) << "," << num(sy(y)) << " ";
      s << "\"/>\n<line x1=\"" << kLeft + plot_w + 12 << "\" x2=\"" << kLeft + plot_w + 32
        << "\" y1=\"" << legend_y - 4 << "\" y2=\"" << legend_y - 4 << "\" stroke=\"" << l.color
        << "\" stroke-width=\"2\"/>\n<text x=\"" << kLeft + plot_w + 38 << "\" y=\"" << legend_y
        << "\">" << escape(l.name) << "</text>\n";
      legend_y += 18;
    }
    for (const auto& [name, x] : p.markers) {
      s << "<line x1=\"" << num(sx(x)) << "\" x2=\"" << num(sx(x)) << "\" y1=\"" << top
        << "\" y2=\"" << top + h << "\" stroke=\"#444\" stroke-dasharray=\"5,4\"/>\n";
      if (!name.empty()) {
        s << "<text x=\"" << num(sx(x) + 4) << "\" y=\"" << top + 14 << "\" fill=\"#444\">"
          << escape(name) << "</text>\n";
      }
    }
    top += h + kGap;
  }
  const double axis_y = top - kGap;
  for (double x = 0; x <= x_max + 1e-9; x += x_step) {
    s << "<text x=\"" << num(sx(x)) << "\" y=\"" << axis_y + 16 << "\" text-anchor=\"middle\">"
      << label(x) << "</text>\n";
  }
  s << "<text x=\"" << kLeft + plot_w / 2 << "\" y=\"" << axis_y + 38
    << "\" text-anchor=\"middle\">" << escape(x_label) << "</text>\n</svg>\n";
  return s.str();
}

Status SvgPlot::write(const std::string& path, const std::string& x_label) const {
  std::ofstream out(path);
  out << render(x_label);
  if (!out) return fail(Errc::kSystem, "--plot", "cannot write " + path);
  return {};
}

}  // namespace lazymig::cli
